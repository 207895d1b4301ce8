//! Access log: one JSON line per call, written off the loop threads.
//!
//! A loop thread must never wait for a disk (or a pipe a log collector reads slowly),
//! so a line travels like this:
//!
//! 1. each loop has a handle of its own (a clone of the [`AccessLog`]), and each handle
//!    a buffer of lines pending, which only it and the writer thread touch (an
//!    uncontended lock);
//! 2. the loop formats a call into it: at once ([`AccessLog::log`]), or in two halves
//!    through a [`Line`] ([`AccessLog::line`], a buffer reused from the handle's pool,
//!    [`Line::start`] with what is known when the call arrives, [`Line::end`] with how
//!    it ended, [`AccessLog::send`] to append it);
//! 3. past [`QUEUE_LINES`] lines pending in a handle, a line is dropped and counted
//!    ([`AccessLog::dropped`], which the agents export as `*_access_log_dropped_total`):
//!    a call never waits for its log line.
//!
//! The writer thread takes every handle's pending lines every [`POLL`] (less often
//! when quiet, down to every [`HUP_CHECK`]), swapping buffers with it, rather than
//! being handed line after line on a channel (a channel costs each line a send and a
//! receive, and a blocked receiver must be woken by the sending loop with a futex call
//! and a context switch). It writes each handle's lines as they are, in one write
//! (not copied into a buffer of its own), and flushes once it has taken everything:
//! lines reach the file within milliseconds of the call, in large writes at high rates;
//! the steady state allocates nothing. A file ([`Target::File`]) is opened with append and create; on
//! `SIGHUP` (a flag the writer checks at least every [`HUP_CHECK`]) it is flushed, closed
//! and opened again by name. With logrotate's default (move the file, then signal),
//! lines written between the move and the signal go to the moved file and later ones to
//! the new file: none is lost. `-` ([`Target::Stdout`]) writes to standard output and
//! ignores `SIGHUP`.
//!
//! A line's fields, in this order:
//!
//! | field | meaning |
//! |---|---|
//! | `time` | when the call arrived, RFC 3339 UTC with milliseconds |
//! | `caller` | the caller's address (`host:port`), or `null` |
//! | `caller_identity` | the caller's verified mTLS identity (SPIFFE URI or `dns:` name), or `null` |
//! | `front` | the front-end that took the call (`http`, `dubbo`, `agent`) |
//! | `service`, `method`, `version`, `group` | what was called (empty when unknown) |
//! | `trace_id` | the trace the call belongs to, 32 lowercase hex digits, or `null` |
//! | `upstream` | the address the call was last sent to, or `null` if it was not sent |
//! | `retries` | attempts after the first |
//! | `status` | the front-end's own status code (HTTP status, Dubbo status byte, agent status) |
//! | `outcome` | how the call ended, as the per-method metrics name it (`ok`, `timeout`, ...) |
//! | `latency_us` | from arrival to answer, microseconds |
//! | `bytes_in`, `bytes_out` | the request and answer as the caller sent and received them |
//!
//! Strings are escaped as JSON requires ([`escape_json`]): whatever a caller names its
//! service or method, a line stays one valid JSON object on one line.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};

use crate::otlp::CallNames;

/// Lines pending in one handle at most (the writer thread takes them every [`POLL`]);
/// past it lines are dropped and counted.
pub const QUEUE_LINES: usize = 16 * 1024;
/// Line buffers a handle keeps for reuse at most.
const POOL_LINES: usize = 4096;
/// How often at least the writer thread checks for `SIGHUP` while no line comes.
pub const HUP_CHECK: Duration = Duration::from_millis(100);
/// How often the writer thread takes the queued lines while they come: rarely enough
/// that its wake-ups and writes are few and large (a wake-up every 5 ms cost a third
/// more of the writer's CPU), often enough that lines reach the file within a moment.
pub const POLL: Duration = Duration::from_millis(50);
/// Capacity a fresh line buffer starts with (a typical line is 300 to 400 bytes).
const LINE_CAPACITY: usize = 512;
/// Buffers larger than this are not returned for reuse (a rare huge service name).
const MAX_POOLED: usize = 8 * 1024;
/// At most one warning per this interval about failed writes or reopens.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Standard output (`-`).
    Stdout,
    /// A file, appended to, reopened on `SIGHUP`.
    File(PathBuf),
}

impl Target {
    /// The target a flag's value names: `-` is standard output, anything else a path.
    pub fn parse(value: &str) -> Target {
        if value == "-" {
            Target::Stdout
        } else {
            Target::File(PathBuf::from(value))
        }
    }
}

/// What is known of a call when it arrives: the first half of its line.
#[derive(Debug, Clone, Copy)]
pub struct CallStart<'a> {
    /// When the call arrived: wall clock, nanoseconds since the Unix epoch (a loop's
    /// reading of the iteration, `reactor::Ctx::wall_unix_nanos`).
    pub unix_nanos: u64,
    /// The caller's address.
    pub caller: Option<SocketAddr>,
    /// The caller's verified mTLS identity, when its connection has one.
    pub caller_identity: Option<&'a str>,
    /// The front-end: `"http"`, `"dubbo"` or `"agent"`.
    pub front: &'a str,
    /// The service (interface), method, version and group asked for (empty: none):
    /// the loop's shared copy of them, so that the line's text of them, made once, is
    /// found by identity rather than compared.
    pub names: &'a CallNames,
}

/// How a call ended: the second half of its line.
#[derive(Debug, Clone, Copy)]
pub struct CallEnd<'a> {
    /// The trace the call belongs to (`None` until the call carries a trace context;
    /// rendered as 32 hex digits, or `null`).
    pub trace_id: Option<[u8; 16]>,
    /// Where the call was last sent (a provider-agent, or the provider).
    pub upstream: Option<SocketAddr>,
    /// Attempts after the first.
    pub retries: u32,
    /// The front-end's status code (HTTP status, Dubbo status byte, agent status).
    pub status: u16,
    /// How the call ended, as the per-method metrics name it.
    pub outcome: &'a str,
    /// From arrival to answer, microseconds.
    pub latency_us: u64,
    /// Bytes of the request as the caller sent it.
    pub bytes_in: u64,
    /// Bytes of the answer as the caller receives it.
    pub bytes_out: u64,
}

/// One line being formatted (see [`AccessLog::line`]). Dropping it unsent loses only
/// its buffer.
#[derive(Debug, Default)]
pub struct Line {
    buf: Vec<u8>,
}

impl Line {
    /// Writes the opening of the line: `{"time":...` through `"group":...`.
    pub fn start(&mut self, call: &CallStart<'_>) {
        TEXTS.with_borrow_mut(|t| write_start(&mut self.buf, call, t));
    }

    /// Writes the rest of the line, after [`Line::start`], and its closing `}` and
    /// line feed.
    pub fn end(&mut self, end: &CallEnd<'_>) {
        TEXTS.with_borrow_mut(|t| write_end(&mut self.buf, end, t));
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// The opening of a line ([`Line::start`]), with the loop's texts `t`.
fn write_start(b: &mut Vec<u8>, call: &CallStart<'_>, t: &mut Texts) {
    b.reserve(LINE_CAPACITY);
    b.extend_from_slice(b"{\"time\":\"");
    write_time(b, call.unix_nanos, &mut t.second);
    b.extend_from_slice(b"\",\"caller\":");
    match call.caller {
        Some(a) => b.extend_from_slice(addr_text(&mut t.addrs, a)),
        None => b.extend_from_slice(b"null"),
    }
    b.extend_from_slice(b",\"caller_identity\":");
    match call.caller_identity {
        Some(id) => escape_json(b, id),
        None => b.extend_from_slice(b"null"),
    }
    b.extend_from_slice(t.names(call));
}

/// The rest of a line and its end ([`Line::end`]), with the loop's texts `t`.
fn write_end(b: &mut Vec<u8>, end: &CallEnd<'_>, t: &mut Texts) {
    // All of it in the loop's scratch buffer, then one copy: at most 356 bytes (34 for
    // the trace id, 59 for an IPv6 address with a scope id, 66 for an outcome kept
    // here, 20 for each of the six numbers, 105 for the names), within `Digits`' 512.
    let n = &mut t.digits;
    n.n = 0;
    n.put(b",\"trace_id\":");
    match end.trace_id {
        Some(id) => {
            let mut text = [b'"'; 34];
            for (pair, b) in text[1..33].chunks_exact_mut(2).zip(id) {
                pair.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
            }
            n.put(&text);
        }
        None => n.put(b"null"),
    }
    n.put(b",\"upstream\":");
    match end.upstream {
        Some(a) => n.put_slice(addr_text(&mut t.addrs, a)),
        None => n.put(b"null"),
    }
    n.put(b",\"retries\":");
    n.num(u64::from(end.retries));
    n.put(b",\"status\":");
    n.num(u64::from(end.status));
    n.put(b",\"outcome\":");
    if !n.put_plain_json_str(end.outcome) {
        b.extend_from_slice(n.as_slice());
        escape_json(b, end.outcome);
        n.n = 0;
    }
    n.put(b",\"latency_us\":");
    n.num(end.latency_us);
    n.put(b",\"bytes_in\":");
    n.num(end.bytes_in);
    n.put(b",\"bytes_out\":");
    n.num(end.bytes_out);
    n.put(b"}\n");
    b.extend_from_slice(n.as_slice());
}

/// Text written in a loop's scratch buffer and copied at once (its 512 bytes hold the
/// second half of any line: see [`write_end`]). What does not fit is dropped, never
/// written past.
#[derive(Debug)]
struct Digits {
    buf: [u8; 512],
    n: usize,
}

impl Digits {
    fn put<const L: usize>(&mut self, bytes: &[u8; L]) {
        if let Some(d) = self.buf.get_mut(self.n..self.n + L) {
            d.copy_from_slice(bytes);
            self.n += L;
        }
    }

    fn put_slice(&mut self, bytes: &[u8]) {
        if let Some(d) = self.buf.get_mut(self.n..self.n + bytes.len()) {
            d.copy_from_slice(bytes);
            self.n += bytes.len();
        }
    }

    /// `s` as a JSON string, if it is short (64 bytes at most) and has nothing to
    /// escape, as the outcomes' names: false (nothing written) otherwise.
    fn put_plain_json_str(&mut self, s: &str) -> bool {
        let bytes = s.as_bytes();
        let plain =
            bytes.len() <= 64 && bytes.iter().all(|&c| c >= 0x20 && c != b'"' && c != b'\\');
        let Some(d) = plain
            .then(|| self.buf.get_mut(self.n..self.n + bytes.len() + 2))
            .flatten()
        else {
            return false;
        };
        if let Some((open, rest)) = d.split_first_mut() {
            *open = b'"';
            if let Some((close, text)) = rest.split_last_mut() {
                text.copy_from_slice(bytes);
                *close = b'"';
            }
        }
        self.n += bytes.len() + 2;
        true
    }

    /// `v` in decimal: its digits counted first, then written in place, two at a time
    /// from the last.
    fn num(&mut self, mut v: u64) {
        let len = v.checked_ilog10().map_or(1, |l| l as usize + 1);
        let Some(d) = self.buf.get_mut(self.n..self.n + len) else {
            return;
        };
        let mut i = len;
        while i >= 2 {
            if let Some(pair) = d.get_mut(i - 2..i) {
                pair.copy_from_slice(&DIGIT_PAIRS[(v % 100) as usize]);
            }
            v /= 100;
            i -= 2;
        }
        if i == 1 {
            if let Some(first) = d.first_mut() {
                *first = b'0' + (v % 10) as u8;
            }
        }
        self.n += len;
    }

    fn as_slice(&self) -> &[u8] {
        self.buf.get(..self.n).unwrap_or_default()
    }
}

thread_local! {
    /// What a loop writes again and again, formatted once: its peers' addresses, the
    /// names of the methods it serves.
    static TEXTS: std::cell::RefCell<Texts> = const {
        std::cell::RefCell::new(Texts {
            addrs: AddrTexts {
                v4: Vec::new(),
                other: Vec::new(),
            },
            names: Vec::new(),
            second: (u64::MAX, [0; 19]),
            digits: Digits { buf: [0; 512], n: 0 },
        })
    };
}

/// The texts of [`TEXTS`].
#[derive(Debug)]
struct Texts {
    /// Addresses' JSON text.
    addrs: AddrTexts,
    names: Vec<NamesText>,
    /// The last second written, and its text ([`write_time`]).
    second: (u64, [u8; 19]),
    /// The scratch buffer of [`write_end`].
    digits: Digits,
}

/// The JSON text of the addresses a loop logs, by slot: an address has one, by its
/// hash (another address with the same slot replaces it), so a lookup is one
/// comparison however many peers come and go.
#[derive(Debug)]
struct AddrTexts {
    /// IPv4 addresses (most peers), [`V4_SLOTS`] of them: key and text side by side,
    /// half a cache line each.
    v4: Vec<V4Text>,
    /// Other addresses, [`OTHER_SLOTS`] of them.
    other: Vec<(Option<SocketAddr>, Vec<u8>)>,
}

/// IPv4 address slots.
const V4_SLOTS: usize = 1024;
/// Slots of other (IPv6) addresses.
const OTHER_SLOTS: usize = 64;

/// An IPv4 address's JSON text, `"a.b.c.d:port"` (23 bytes at most), and its key.
#[derive(Debug, Clone, Copy)]
struct V4Text {
    /// The address and port in one number, plus one (0: an empty slot).
    key: u64,
    len: u8,
    text: [u8; 23],
}

impl V4Text {
    const EMPTY: V4Text = V4Text {
        key: 0,
        len: 0,
        text: [0; 23],
    };

    /// Only on a slot's miss (a new peer): through `fmt`, as the address prints.
    fn of(a: SocketAddrV4, key: u64) -> V4Text {
        let mut t = V4Text {
            key,
            ..V4Text::EMPTY
        };
        let mut out = io::Cursor::new(&mut t.text[..]);
        // 23 bytes hold the longest, `"255.255.255.255:65535"`.
        let _ = write!(out, "\"{a}\"");
        t.len = out.position() as u8;
        t
    }
}

/// Fibonacci hashing of `v` into a slot of `slots`.
fn slot_of(v: u64, slots: usize) -> usize {
    (v.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize % slots
}

/// `,"front":...,"service":...,"method":...,"version":...,"group":...` of some names.
#[derive(Debug)]
struct NamesText {
    /// The names (held: their text is never another's while kept here).
    names: CallNames,
    front: String,
    json: Vec<u8>,
}

impl Texts {
    /// Entries kept of each kind; past it the oldest is replaced.
    const SIZE: usize = 32;

    fn names(&mut self, call: &CallStart<'_>) -> &[u8] {
        // From the newest: the methods of the moment are the last added.
        let same = |n: &NamesText| n.names.same(call.names) && n.front == call.front;
        let i = match self.names.iter().rposition(same) {
            Some(i) => i,
            None => {
                let n = call.names;
                let parts = [call.front, n.service(), n.method(), n.version(), n.group()];
                let mut json = Vec::new();
                for (name, value) in ["front", "service", "method", "version", "group"]
                    .into_iter()
                    .zip(parts)
                {
                    json.extend_from_slice(b",\"");
                    json.extend_from_slice(name.as_bytes());
                    json.extend_from_slice(b"\":");
                    escape_json(&mut json, value);
                }
                if self.names.len() >= Self::SIZE {
                    self.names.remove(0);
                }
                self.names.push(NamesText {
                    names: n.clone(),
                    front: call.front.to_owned(),
                    json,
                });
                self.names.len() - 1
            }
        };
        self.names.get(i).map_or(&[][..], |n| n.json.as_slice())
    }
}

/// The JSON text of `addr`, kept in its slot of `addrs`.
fn addr_text(addrs: &mut AddrTexts, addr: SocketAddr) -> &[u8] {
    match addr {
        SocketAddr::V4(a) => {
            let key = ((u64::from(a.ip().to_bits()) << 16) | u64::from(a.port())) + 1;
            if addrs.v4.is_empty() {
                addrs.v4.resize(V4_SLOTS, V4Text::EMPTY);
            }
            let Some(slot) = addrs.v4.get_mut(slot_of(key, V4_SLOTS)) else {
                return &[];
            };
            if slot.key != key {
                *slot = V4Text::of(a, key);
            }
            slot.text.get(..usize::from(slot.len)).unwrap_or_default()
        }
        other => {
            let bits = match other.ip() {
                std::net::IpAddr::V6(ip) => ip.to_bits(),
                std::net::IpAddr::V4(ip) => u128::from(ip.to_bits()),
            };
            let hash = ((bits >> 64) as u64) ^ (bits as u64) ^ u64::from(other.port());
            if addrs.other.is_empty() {
                addrs.other.resize_with(OTHER_SLOTS, || (None, Vec::new()));
            }
            let Some(slot) = addrs.other.get_mut(slot_of(hash, OTHER_SLOTS)) else {
                return &[];
            };
            if slot.0 != Some(other) {
                slot.0 = Some(other);
                slot.1.clear();
                write_addr(&mut slot.1, Some(other));
            }
            &slot.1
        }
    }
}

/// State shared by the loops' handles and the writer thread.
#[derive(Debug, Default)]
struct Shared {
    dropped: AtomicU64,
    written: AtomicU64,
    reopens: AtomicU64,
    /// Lines appended (not dropped).
    sent: AtomicU64,
    /// Lines the writer has handled (written or failed) and flushed.
    flushed: AtomicU64,
    /// Every handle's pending lines, for the writer thread to take.
    pending: std::sync::Mutex<Vec<Arc<std::sync::Mutex<Pending>>>>,
}

/// One handle's lines, waiting for the writer thread.
#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    lines: u64,
    /// Line buffers for [`AccessLog::line`].
    pool: Vec<Vec<u8>>,
}

/// A handle on an access log: each loop has its own (a clone), whose lines the writer
/// thread takes. When the last handle is dropped the writer thread writes what is
/// pending and ends.
#[derive(Debug)]
pub struct AccessLog {
    /// Its pending lines.
    mine: Arc<std::sync::Mutex<Pending>>,
    /// Held by every handle: the writer sees the last one go.
    alive: Sender<()>,
    shared: Arc<Shared>,
    target: Arc<Target>,
    /// Joined by the last [`AccessLog::close`].
    writer: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl Clone for AccessLog {
    /// Another handle, with lines pending of its own.
    fn clone(&self) -> AccessLog {
        let mine = Arc::new(std::sync::Mutex::new(Pending::default()));
        if let Ok(mut all) = self.shared.pending.lock() {
            all.push(mine.clone());
        }
        AccessLog {
            mine,
            alive: self.alive.clone(),
            shared: self.shared.clone(),
            target: self.target.clone(),
            writer: self.writer.clone(),
        }
    }
}

impl AccessLog {
    /// What `--access-log` asks for (off without it), opened: the error names the flag.
    ///
    /// # Errors
    /// As [`AccessLog::open`].
    pub fn from_flag(value: Option<&str>) -> Result<Option<AccessLog>, String> {
        let Some(value) = value else {
            return Ok(None);
        };
        AccessLog::open(Target::parse(value), "access-log")
            .map(Some)
            .map_err(|e| format!("--access-log {value}: {e}"))
    }

    /// Opens `target` (a file is created if missing, and appended to) and starts the
    /// writer thread, named `thread_name`.
    ///
    /// # Errors
    /// The file cannot be opened, the `SIGHUP` handler not installed, or the thread not
    /// started.
    pub fn open(target: Target, thread_name: &str) -> io::Result<AccessLog> {
        let out = open_target(&target)?;
        let hup = Arc::new(AtomicBool::new(false));
        let sig = match target {
            Target::File(_) => Some(signal_hook::flag::register(
                signal_hook::consts::SIGHUP,
                hup.clone(),
            )?),
            Target::Stdout => None,
        };
        let (alive, alive_rx) = bounded::<()>(1);
        let shared = Arc::new(Shared::default());
        let mine = Arc::new(std::sync::Mutex::new(Pending::default()));
        if let Ok(mut all) = shared.pending.lock() {
            all.push(mine.clone());
        }
        let mut writer = Writer {
            target: target.clone(),
            out,
            hup,
            shared: shared.clone(),
            last_warning: None,
            handled: 0,
            spare: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name(thread_name.to_owned())
            .spawn(move || {
                writer.run(&alive_rx);
                if let Some(id) = sig {
                    signal_hook::low_level::unregister(id);
                }
            })?;
        Ok(AccessLog {
            mine,
            alive,
            shared,
            target: Arc::new(target),
            writer: Arc::new(std::sync::Mutex::new(Some(handle))),
        })
    }

    /// Where the lines go.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// An empty line to format a call into: a buffer of an earlier line when this
    /// handle has one (no allocation), else a new one.
    pub fn line(&self) -> Line {
        let buf = (self.mine.lock().ok())
            .and_then(|mut p| p.pool.pop())
            .unwrap_or_else(|| Vec::with_capacity(LINE_CAPACITY));
        Line { buf }
    }

    /// Appends a finished line for the writer thread; never waits. Past
    /// [`QUEUE_LINES`] pending it is dropped (counted in [`AccessLog::dropped`]).
    pub fn send(&self, line: Line) {
        let Ok(mut p) = self.mine.lock() else {
            return;
        };
        if p.lines >= QUEUE_LINES as u64 {
            self.shared.dropped.fetch_add(1, Relaxed);
        } else {
            p.bytes.extend_from_slice(&line.buf);
            p.lines += 1;
            self.shared.sent.fetch_add(1, Relaxed);
        }
        let mut buf = line.buf;
        if buf.capacity() <= MAX_POOLED && p.pool.len() < POOL_LINES {
            buf.clear();
            p.pool.push(buf);
        }
    }

    /// Formats a whole call straight into the lines pending (as [`Line::start`] and
    /// [`Line::end`] would) for the writer thread; never waits. Past [`QUEUE_LINES`]
    /// pending it is dropped (counted in [`AccessLog::dropped`]).
    pub fn log(&self, start: &CallStart<'_>, end: &CallEnd<'_>) {
        let Ok(mut p) = self.mine.lock() else {
            return;
        };
        if p.lines >= QUEUE_LINES as u64 {
            self.shared.dropped.fetch_add(1, Relaxed);
            return;
        }
        TEXTS.with_borrow_mut(|t| {
            write_start(&mut p.bytes, start, t);
            write_end(&mut p.bytes, end, t);
        });
        p.lines += 1;
        self.shared.sent.fetch_add(1, Relaxed);
    }

    /// Lines dropped because too many were pending.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Relaxed)
    }

    /// Lines written (handed to the file; flushed within a moment).
    pub fn written(&self) -> u64 {
        self.shared.written.load(Relaxed)
    }

    /// Times the file was reopened after `SIGHUP`.
    pub fn reopens(&self) -> u64 {
        self.shared.reopens.load(Relaxed)
    }

    /// Waits, at most `timeout`, until every line sent so far is written and flushed;
    /// false if the time ran out. For a stop: once the loops are gone, their last lines
    /// reach the file before the process exits.
    pub fn sync(&self, timeout: Duration) -> bool {
        let sent = self.shared.sent.load(Relaxed);
        let end = Instant::now() + timeout;
        while self.shared.flushed.load(Relaxed) < sent {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Drops this handle; if it was the last one, waits for the writer thread to write
    /// what is pending and end. Handles held elsewhere keep the writer running.
    pub fn close(self) {
        let writer = self.writer.clone();
        drop(self);
        if Arc::strong_count(&writer) == 1 {
            if let Some(handle) = writer.lock().ok().and_then(|mut h| h.take()) {
                let _ = handle.join();
            }
        }
    }
}

/// The writer thread's state.
struct Writer {
    target: Target,
    out: Box<dyn Write + Send>,
    hup: Arc<AtomicBool>,
    shared: Arc<Shared>,
    last_warning: Option<Instant>,
    /// Lines handled (written or failed) so far.
    handled: u64,
    /// Swapped with a handle's pending lines.
    spare: Vec<u8>,
}

impl Writer {
    /// Polls rather than blocks (see the module's notes): every [`POLL`] it takes what
    /// each handle has pending, writes it, and flushes.
    fn run(&mut self, alive: &Receiver<()>) {
        let mut idle = Duration::ZERO;
        loop {
            if self.hup.swap(false, Relaxed) {
                self.reopen();
            }
            // Every handle gone: what they left is taken below, for the last time.
            let last = matches!(alive.try_recv(), Err(TryRecvError::Disconnected));
            let wrote = self.take_all();
            if wrote {
                if let Err(e) = self.out.flush() {
                    self.warn(format_args!("access log: write failed: {e}"));
                }
                self.shared.flushed.store(self.handled, Relaxed);
                idle = Duration::ZERO;
            }
            if last {
                break;
            }
            // Quiet: poll less often, down to every HUP_CHECK.
            idle = (idle + POLL).min(HUP_CHECK);
            std::thread::sleep(if wrote { POLL } else { idle });
        }
        let _ = self.out.flush();
    }

    /// Writes every handle's pending lines; whether there were any. Handles gone
    /// (only the list holds them) are forgotten once empty.
    fn take_all(&mut self) -> bool {
        let shared = self.shared.clone();
        let Ok(mut all) = shared.pending.lock() else {
            return false;
        };
        let mut wrote = false;
        for handle in all.iter() {
            let lines = match handle.lock() {
                Ok(mut p) if p.lines > 0 => {
                    std::mem::swap(&mut p.bytes, &mut self.spare);
                    std::mem::take(&mut p.lines)
                }
                _ => continue,
            };
            wrote = true;
            self.handled += lines;
            match self.out.write_all(&self.spare) {
                Ok(()) => {
                    self.shared.written.fetch_add(lines, Relaxed);
                }
                Err(e) => self.warn(format_args!("access log: write failed: {e}")),
            }
            self.spare.clear();
        }
        all.retain(|h| Arc::strong_count(h) > 1 || h.lock().is_ok_and(|p| p.lines > 0));
        wrote
    }

    /// Flushes and reopens the file by name (log rotation moved the old one away).
    fn reopen(&mut self) {
        if let Err(e) = self.out.flush() {
            self.warn(format_args!("access log: write failed: {e}"));
        }
        if self.target == Target::Stdout {
            return;
        }
        match open_target(&self.target) {
            Ok(out) => {
                // The old file is closed (dropped) once the new one is in place.
                self.out = out;
                self.shared.reopens.fetch_add(1, Relaxed);
                log::info!("access log: reopened {:?} on SIGHUP", self.target);
            }
            Err(e) => {
                let target = self.target.clone();
                self.warn(format_args!(
                    "access log: cannot reopen {target:?}: {e} (still writing to the old file)"
                ))
            }
        }
    }

    fn warn(&mut self, msg: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
        {
            self.last_warning = Some(now);
            log::warn!("{msg}");
        }
    }
}

fn open_target(target: &Target) -> io::Result<Box<dyn Write + Send>> {
    Ok(match target {
        Target::Stdout => Box::new(io::stdout()),
        Target::File(path) => {
            let f: File = OpenOptions::new().append(true).create(true).open(path)?;
            Box::new(f)
        }
    })
}

/// Appends `s` as a JSON string, quotes included: `"` and `\` escaped, control
/// characters as `\n`, `\r`, `\t` or `\u00XX`, everything else as it is (the line is
/// UTF-8, as JSON asks).
pub fn escape_json(out: &mut Vec<u8>, s: &str) {
    codec::json::write_str(out, s);
}

/// Writes `v` in decimal, digit by digit (a few digits: cheaper than a copy).
fn write_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        if let Some(d) = digits.get_mut(n) {
            *d = b'0' + (v % 10) as u8;
        }
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &d in digits.iter().take(n).rev() {
        out.push(d);
    }
}

/// Writes `n` as exactly `width` digits (zero-padded; the low digits if longer).
fn write_padded(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let width = width.min(digits.len());
    for d in digits.iter_mut().take(width).rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(digits.get(..width).unwrap_or_default());
}

fn write_addr(out: &mut Vec<u8>, addr: Option<SocketAddr>) {
    match addr {
        // The common case without `fmt` (a fifth of a line's cost through it).
        Some(SocketAddr::V4(a)) => {
            out.push(b'"');
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                write_u64(out, u64::from(octet));
            }
            out.push(b':');
            write_u64(out, u64::from(a.port()));
            out.push(b'"');
        }
        // An address has no character JSON must escape: written as it prints.
        Some(a) => {
            out.push(b'"');
            let _ = write!(out, "{a}");
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// The two lower-case hex digits of each byte.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    t
};

/// The two decimal digits of each number below 100.
const DIGIT_PAIRS: [[u8; 2]; 100] = {
    let mut t = [[0u8; 2]; 100];
    let mut i = 0;
    while i < 100 {
        t[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        i += 1;
    }
    t
};

/// Writes `unix_nanos` (nanoseconds since the Unix epoch) as RFC 3339 in UTC with
/// milliseconds (`2026-12-04T10:24:47.123Z`).
pub fn write_rfc3339_ms(out: &mut Vec<u8>, unix_nanos: u64) {
    // Calls of one second share their date and time: each thread keeps the last one.
    thread_local! {
        static LAST: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    }
    let mut last = LAST.get();
    write_time(out, unix_nanos, &mut last);
    LAST.set(last);
}

/// [`write_rfc3339_ms`] with `last`, the last second written and its text, kept by the
/// caller (lines of one second share their date and time).
fn write_time(out: &mut Vec<u8>, unix_nanos: u64, last: &mut (u64, [u8; 19])) {
    let secs = unix_nanos / 1_000_000_000;
    if last.0 != secs {
        let mut text = Vec::with_capacity(19);
        write_seconds(&mut text, secs);
        *last = (
            secs,
            <[u8; 19]>::try_from(text.as_slice()).unwrap_or([b'0'; 19]),
        );
    }
    // The date and time, then the milliseconds: one copy of 24 bytes.
    let mut text = [0u8; 24];
    text[..19].copy_from_slice(&last.1);
    let ms = unix_nanos % 1_000_000_000 / 1_000_000;
    text[19] = b'.';
    text[20] = b'0' + (ms / 100 % 10) as u8;
    text[21] = b'0' + (ms / 10 % 10) as u8;
    text[22] = b'0' + (ms % 10) as u8;
    text[23] = b'Z';
    out.extend_from_slice(&text);
}

/// `YYYY-MM-DDTHH:MM:SS` of `secs` since the epoch.
fn write_seconds(out: &mut Vec<u8>, secs: u64) {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    write_padded(out, y, 4);
    out.push(b'-');
    write_padded(out, m, 2);
    out.push(b'-');
    write_padded(out, d, 2);
    out.push(b'T');
    write_padded(out, rem / 3600, 2);
    out.push(b':');
    write_padded(out, rem / 60 % 60, 2);
    out.push(b':');
    write_padded(out, rem % 60, 2);
}

/// Year, month (1-12) and day (1-31) of a count of days since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_opens_the_log_or_says_which_flag_failed() {
        assert!(matches!(AccessLog::from_flag(None), Ok(None)));
        let err = AccessLog::from_flag(Some("/nonexistent-dir/access.log")).err();
        assert!(
            err.as_deref()
                .is_some_and(|e| e.starts_with("--access-log /nonexistent-dir/access.log: ")),
            "{err:?}"
        );
    }

    fn json(s: &str) -> String {
        let mut out = Vec::new();
        escape_json(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_are_escaped_as_json_requires() {
        assert_eq!(json("plain.Service"), "\"plain.Service\"");
        assert_eq!(json("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(json("l1\nl2\r\t"), "\"l1\\nl2\\r\\t\"");
        assert_eq!(json("\u{0}\u{1f}\u{7f}"), "\"\\u0000\\u001f\u{7f}\"");
        assert_eq!(json("héllo ☃ \u{2028}"), "\"héllo ☃ \u{2028}\"");
        assert_eq!(json(""), "\"\"");
        // Every string round-trips through a JSON parser.
        let nasty: String = (0u32..0x300).filter_map(char::from_u32).collect();
        for s in [nasty.as_str(), "}\n{\"injected\":1}", "\\u0041"] {
            let back: String = serde_json::from_str(&json(s)).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn numbers_are_written_as_std_writes_them() {
        let mut cases: Vec<u64> = (0..=1000).collect();
        let mut p = 1u64;
        while let Some(next) = p.checked_mul(10) {
            cases.extend([p - 1, p, p + 1, next - 1]);
            p = next;
        }
        cases.push(u64::MAX);
        for v in cases {
            let mut d = Digits {
                buf: [0; 512],
                n: 0,
            };
            d.num(v);
            assert_eq!(d.as_slice(), v.to_string().as_bytes());
        }
    }

    #[test]
    fn short_plain_strings_are_written_as_any_json_string() {
        let (long, longer) = ("x".repeat(64), "y".repeat(65));
        for s in [
            "ok",
            "",
            "provider_error",
            "héllo",
            &long,
            "a\"b",
            "tab\there",
            &longer,
        ] {
            let mut want = Vec::new();
            escape_json(&mut want, s);
            let mut d = Digits {
                buf: [0; 512],
                n: 0,
            };
            if d.put_plain_json_str(s) {
                assert_eq!(d.as_slice(), want, "{s}");
            } else {
                assert!(d.as_slice().is_empty(), "{s}");
                assert!(s.len() > 64 || want.len() > s.len() + 2, "{s}");
            }
        }
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        let at = |secs: u64, ms: u64| {
            let mut out = Vec::new();
            write_rfc3339_ms(&mut out, (secs * 1000 + ms) * 1_000_000 + 999_999);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.007Z");
        assert_eq!(at(1_796_380_287, 123), "2026-12-04T10:31:27.123Z");
        assert_eq!(at(4_102_444_799, 999), "2099-12-31T23:59:59.999Z");
        // The same second again (its text is kept), then another.
        assert_eq!(at(4_102_444_799, 1), "2099-12-31T23:59:59.001Z");
        assert_eq!(at(4_102_444_800, 0), "2100-01-01T00:00:00.000Z");
    }

    #[test]
    fn addresses_print_as_std_prints_them() {
        for a in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.1.20.3:30000",
            "[::1]:80",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut out = Vec::new();
            write_addr(&mut out, Some(addr));
            assert_eq!(out, format!("\"{addr}\"").into_bytes());
        }
    }

    #[test]
    fn kept_address_texts_are_those_of_the_address_asked_for() {
        let mut addrs = AddrTexts {
            v4: Vec::new(),
            other: Vec::new(),
        };
        // Far more addresses than slots, each asked for twice (kept, or replaced by
        // another of the same slot meanwhile), the longest and shortest among them.
        let mut all: Vec<SocketAddr> = vec![
            "255.255.255.255:65535".parse().unwrap(),
            "0.0.0.0:0".parse().unwrap(),
            "[::1]:80".parse().unwrap(),
            "[fe80::1%2]:8080".parse().unwrap(),
        ];
        for i in 0..5_000u32 {
            all.push(SocketAddr::from((i.to_be_bytes(), (i * 7) as u16)));
            all.push(format!("[::{i:x}]:{i}").parse().unwrap());
        }
        for _ in 0..2 {
            for a in &all {
                let text = addr_text(&mut addrs, *a);
                assert_eq!(text, format!("\"{a}\"").as_bytes());
            }
        }
        assert_eq!((addrs.v4.len(), addrs.other.len()), (V4_SLOTS, OTHER_SLOTS));
    }

    fn sample(line: &mut Line, trace: Option<[u8; 16]>) {
        line.start(&CallStart {
            unix_nanos: 1_796_380_287_123_000_000,
            caller: "127.0.0.1:5000".parse().ok(),
            caller_identity: Some("spiffe://mesh/consumer"),
            front: "http",
            names: &CallNames::new("com.example.Svc\"\n", "hello", "1.0", ""),
        });
        line.end(&CallEnd {
            trace_id: trace,
            upstream: "[::1]:30000".parse().ok(),
            retries: 1,
            status: 200,
            outcome: "ok",
            latency_us: 1234,
            bytes_in: 300,
            bytes_out: 120,
        });
    }

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let mut line = Line::default();
        let mut id = [0u8; 16];
        id[0] = 0xab;
        id[15] = 0x01;
        sample(&mut line, Some(id));
        let text = std::str::from_utf8(line.as_bytes()).unwrap();
        assert!(
            text.ends_with("}\n") && text.matches('\n').count() == 1,
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["time"], "2026-12-04T10:31:27.123Z");
        assert_eq!(v["caller"], "127.0.0.1:5000");
        assert_eq!(v["caller_identity"], "spiffe://mesh/consumer");
        assert_eq!(v["front"], "http");
        assert_eq!(v["service"], "com.example.Svc\"\n");
        assert_eq!(v["method"], "hello");
        assert_eq!(v["version"], "1.0");
        assert_eq!(v["group"], "");
        assert_eq!(v["trace_id"], "ab000000000000000000000000000001");
        assert_eq!(v["upstream"], "[::1]:30000");
        assert_eq!(v["retries"].as_u64(), Some(1));
        assert_eq!(v["status"].as_u64(), Some(200));
        assert_eq!(v["outcome"], "ok");
        assert_eq!(v["latency_us"].as_u64(), Some(1234));
        assert_eq!(v["bytes_in"].as_u64(), Some(300));
        assert_eq!(v["bytes_out"].as_u64(), Some(120));
        let mut line = Line::default();
        sample(&mut line, None);
        let v: serde_json::Value = serde_json::from_slice(line.as_bytes()).unwrap();
        assert!(v["trace_id"].is_null());
    }

    #[test]
    fn the_longest_second_half_of_a_line_is_whole() {
        let upstream = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535";
        let outcome = "o".repeat(64);
        let mut line = Line::default();
        line.end(&CallEnd {
            trace_id: Some([0xff; 16]),
            upstream: upstream.parse().ok(),
            retries: u32::MAX,
            status: u16::MAX,
            outcome: &outcome,
            latency_us: u64::MAX,
            bytes_in: u64::MAX,
            bytes_out: u64::MAX,
        });
        let text = format!("{{\"x\":0{}", std::str::from_utf8(line.as_bytes()).unwrap());
        let v: serde_json::Value = serde_json::from_str(&text).expect("whole JSON");
        assert_eq!(v["upstream"], upstream);
        assert_eq!(v["outcome"], outcome.as_str());
        assert_eq!(v["bytes_out"].as_u64(), Some(u64::MAX));
    }

    #[test]
    fn names_and_addresses_kept_are_those_of_the_call() {
        let line = |names: &CallNames, front: &str, caller: &str| {
            let mut line = Line::default();
            line.start(&CallStart {
                unix_nanos: 0,
                caller: caller.parse().ok(),
                caller_identity: None,
                front,
                names,
            });
            line.end(&CallEnd {
                trace_id: None,
                upstream: None,
                retries: 0,
                status: 20,
                outcome: "ok",
                latency_us: u64::MAX,
                bytes_in: 0,
                bytes_out: 9,
            });
            serde_json::from_slice::<serde_json::Value>(line.as_bytes()).unwrap()
        };
        // Names of the same lengths, others of other lengths, again and again (the same
        // copies, and equal ones made anew), under two fronts; more of them than are kept.
        let pairs = [("a.B", "mn"), ("a.C", "mn"), ("a.B", "nm"), ("x", "y")];
        let kept: Vec<CallNames> = (pairs.iter())
            .map(|(s, m)| CallNames::new(s, m, "", ""))
            .collect();
        for round in 0..3 {
            for (i, (service, method)) in pairs.into_iter().enumerate() {
                let caller = format!("10.0.{round}.{i}:{}", 1000 + i);
                let anew = CallNames::new(service, method, "", "");
                for (names, front) in [(&kept[i], "dubbo"), (&anew, "dubbo"), (&kept[i], "http")] {
                    let v = line(names, front, &caller);
                    assert_eq!(
                        (v["service"].as_str(), v["method"].as_str()),
                        (Some(service), Some(method))
                    );
                    assert_eq!(v["front"].as_str(), Some(front));
                    assert_eq!(v["caller"].as_str(), Some(caller.as_str()));
                    assert_eq!(v["latency_us"].as_u64(), Some(u64::MAX));
                }
            }
            for i in 0..40 {
                let names = CallNames::new(&format!("s{i}"), "m", "", "");
                let v = line(&names, "dubbo", "[::1]:1");
                assert_eq!(v["service"].as_str(), Some(format!("s{i}").as_str()));
            }
        }
        // Nameless: empty strings.
        let v = line(&CallNames::default(), "agent", "[::1]:1");
        assert_eq!(
            (v["service"].as_str(), v["group"].as_str()),
            (Some(""), Some(""))
        );
    }

    #[test]
    fn lines_reach_the_file_and_sighup_reopens_it_losing_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(Target::File(path.clone()), "test-access").unwrap();
        for _ in 0..100 {
            let mut line = log.line();
            sample(&mut line, None);
            log.send(line);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while log.written() < 100 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(log.written(), 100);
        // Rotation: the file moves away, SIGHUP, more lines.
        let moved = dir.path().join("access.log.1");
        std::fs::rename(&path, &moved).unwrap();
        signal_hook::low_level::raise(signal_hook::consts::SIGHUP).unwrap();
        for _ in 0..100 {
            let mut line = log.line();
            sample(&mut line, None);
            log.send(line);
        }
        while (log.written() < 200 || log.reopens() < 1) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(log.dropped(), 0);
        assert_eq!(log.reopens(), 1);
        log.close();
        let old = std::fs::read_to_string(&moved).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert_eq!(old.lines().count() + new.lines().count(), 200);
        assert!(old.lines().count() >= 100);
        for l in old.lines().chain(new.lines()) {
            let _: serde_json::Value = serde_json::from_str(l).unwrap();
        }
    }
}
