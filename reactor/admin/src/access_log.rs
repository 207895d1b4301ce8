//! Access log: one JSON line per call, written off the loop threads.
//!
//! A loop thread must never wait for a disk (or a pipe a log collector reads slowly),
//! so a line travels like this:
//!
//! 1. the loop takes a [`Line`] ([`AccessLog::line`]): a buffer back from the writer
//!    thread's return channel, so the steady state allocates nothing;
//! 2. it formats the call into it ([`Line::start`] with what is known when the call
//!    arrives, [`Line::end`] with how it ended; or [`AccessLog::log`] for both at once);
//! 3. [`AccessLog::send`] hands it to the writer thread with `try_send` on a bounded
//!    channel ([`QUEUE_LINES`]). When the channel is full the line is dropped and
//!    counted ([`AccessLog::dropped`], which the agents export as
//!    `*_access_log_dropped_total`): a call never waits for its log line.
//!
//! The writer thread takes what is queued every [`POLL`] (less often when quiet, down
//! to every [`HUP_CHECK`]) rather than blocking on the channel, since a blocked
//! receiver must be woken by the sending loop with a futex call and a context switch,
//! line by line. It writes through a `BufWriter` and flushes once the channel is empty:
//! lines reach the file within milliseconds of the call, in large writes at high
//! rates. A file ([`Target::File`]) is opened with append and create; on
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
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError, TrySendError};

/// Lines queued for the writer thread at most; past it lines are dropped and counted.
pub const QUEUE_LINES: usize = 16 * 1024;
/// How often at least the writer thread checks for `SIGHUP` while no line comes.
pub const HUP_CHECK: Duration = Duration::from_millis(100);
/// How often the writer thread takes the queued lines while they come.
pub const POLL: Duration = Duration::from_millis(5);
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
    /// When the call arrived (wall clock).
    pub time: SystemTime,
    /// The caller's address.
    pub caller: Option<SocketAddr>,
    /// The caller's verified mTLS identity, when its connection has one.
    pub caller_identity: Option<&'a str>,
    /// The front-end: `"http"`, `"dubbo"` or `"agent"`.
    pub front: &'a str,
    /// The service (interface) called.
    pub service: &'a str,
    /// The method called.
    pub method: &'a str,
    /// The service version asked for (empty: none).
    pub version: &'a str,
    /// The service group asked for (empty: none).
    pub group: &'a str,
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
        let b = &mut self.buf;
        b.extend_from_slice(b"{\"time\":\"");
        write_rfc3339_ms(b, call.time);
        b.extend_from_slice(b"\",\"caller\":");
        write_addr(b, call.caller);
        b.extend_from_slice(b",\"caller_identity\":");
        match call.caller_identity {
            Some(id) => write_json_str(b, id),
            None => b.extend_from_slice(b"null"),
        }
        for (name, value) in [
            ("front", call.front),
            ("service", call.service),
            ("method", call.method),
            ("version", call.version),
            ("group", call.group),
        ] {
            b.extend_from_slice(b",\"");
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(b"\":");
            write_json_str(b, value);
        }
    }

    /// Writes the rest of the line, after [`Line::start`], and its closing `}` and
    /// line feed.
    pub fn end(&mut self, end: &CallEnd<'_>) {
        let b = &mut self.buf;
        b.extend_from_slice(b",\"trace_id\":");
        write_trace_id(b, end.trace_id);
        b.extend_from_slice(b",\"upstream\":");
        write_addr(b, end.upstream);
        write_u64_field(b, "retries", u64::from(end.retries));
        write_u64_field(b, "status", u64::from(end.status));
        b.extend_from_slice(b",\"outcome\":");
        write_json_str(b, end.outcome);
        write_u64_field(b, "latency_us", end.latency_us);
        write_u64_field(b, "bytes_in", end.bytes_in);
        write_u64_field(b, "bytes_out", end.bytes_out);
        b.extend_from_slice(b"}\n");
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// State shared by the loops' handles and the writer thread.
#[derive(Debug)]
struct Shared {
    dropped: AtomicU64,
    written: AtomicU64,
    reopens: AtomicU64,
    /// Lines queued (sent and not dropped).
    sent: AtomicU64,
    /// Lines the writer has handled (written or failed) and flushed.
    flushed: AtomicU64,
}

/// The sending side of an access log, shared by every loop (cheap to clone). When the
/// last clone is dropped the writer thread writes what is queued and ends.
#[derive(Debug, Clone)]
pub struct AccessLog {
    lines: Sender<Vec<u8>>,
    /// Buffers the writer thread is done with, for reuse.
    spare: Receiver<Vec<u8>>,
    shared: Arc<Shared>,
    target: Arc<Target>,
    /// Joined by the last [`AccessLog::close`].
    writer: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl AccessLog {
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
        let (lines_tx, lines_rx) = bounded::<Vec<u8>>(QUEUE_LINES);
        // Room for every queued line's buffer and a loop's worth more: past it a spent
        // buffer is freed.
        let (spare_tx, spare_rx) = bounded::<Vec<u8>>(QUEUE_LINES + 1024);
        let shared = Arc::new(Shared {
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            reopens: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
        });
        let mut writer = Writer {
            target: target.clone(),
            out: BufWriter::with_capacity(64 * 1024, out),
            hup,
            shared: shared.clone(),
            last_warning: None,
            handled: 0,
        };
        let handle = std::thread::Builder::new()
            .name(thread_name.to_owned())
            .spawn(move || {
                writer.run(&lines_rx, &spare_tx);
                if let Some(id) = sig {
                    signal_hook::low_level::unregister(id);
                }
            })?;
        Ok(AccessLog {
            lines: lines_tx,
            spare: spare_rx,
            shared,
            target: Arc::new(target),
            writer: Arc::new(std::sync::Mutex::new(Some(handle))),
        })
    }

    /// Where the lines go.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// An empty line to format a call into: a spent buffer back from the writer when
    /// one is there (no allocation), else a new one.
    pub fn line(&self) -> Line {
        let mut buf = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(LINE_CAPACITY));
        buf.clear();
        Line { buf }
    }

    /// Hands a finished line to the writer thread; never waits. A full queue drops it
    /// (counted in [`AccessLog::dropped`]).
    pub fn send(&self, line: Line) {
        match self.lines.try_send(line.buf) {
            Ok(()) => {
                self.shared.sent.fetch_add(1, Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Formats a whole call and sends it: [`AccessLog::line`], [`Line::start`],
    /// [`Line::end`], [`AccessLog::send`].
    pub fn log(&self, start: &CallStart<'_>, end: &CallEnd<'_>) {
        let mut line = self.line();
        line.start(start);
        line.end(end);
        self.send(line);
    }

    /// Lines dropped because the queue was full.
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
    /// what is queued and end. Handles held elsewhere keep the writer running.
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
    out: BufWriter<Box<dyn Write + Send>>,
    hup: Arc<AtomicBool>,
    shared: Arc<Shared>,
    last_warning: Option<Instant>,
    /// Lines handled (written or failed) so far.
    handled: u64,
}

impl Writer {
    /// Polls rather than blocks: a receiver blocked in `recv` must be woken by the
    /// sender, a futex call and a context switch per line when lines come one at a
    /// time, several microseconds of CPU per call in all (measured: 3 to 4 µs per call
    /// through both agents). Polling every [`POLL`] costs the loops nothing but the
    /// `try_send`, and writes what came meanwhile in one batch.
    fn run(&mut self, lines: &Receiver<Vec<u8>>, spare: &Sender<Vec<u8>>) {
        let mut idle = Duration::ZERO;
        loop {
            if self.hup.swap(false, Relaxed) {
                self.reopen();
            }
            let mut wrote = false;
            let mut disconnected = false;
            // Everything queued goes in this batch; one flush when it is empty.
            loop {
                match lines.try_recv() {
                    Ok(line) => {
                        self.write(line, spare);
                        wrote = true;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                }
            }
            if wrote {
                if let Err(e) = self.out.flush() {
                    self.warn(format_args!("access log: write failed: {e}"));
                }
                self.shared.flushed.store(self.handled, Relaxed);
                idle = Duration::ZERO;
            }
            if disconnected {
                break;
            }
            // Quiet: poll less often, down to every HUP_CHECK.
            idle = (idle + POLL).min(HUP_CHECK);
            std::thread::sleep(if wrote { POLL } else { idle });
        }
        let _ = self.out.flush();
    }

    fn write(&mut self, line: Vec<u8>, spare: &Sender<Vec<u8>>) {
        self.handled += 1;
        match self.out.write_all(&line) {
            Ok(()) => {
                self.shared.written.fetch_add(1, Relaxed);
            }
            Err(e) => self.warn(format_args!("access log: write failed: {e}")),
        }
        if line.capacity() <= MAX_POOLED {
            let _ = spare.try_send(line);
        }
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
                self.out = BufWriter::with_capacity(64 * 1024, out);
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
    write_json_str(out, s);
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut plain = 0;
    for (i, &c) in bytes.iter().enumerate() {
        let escaped: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(bytes.get(plain..i).unwrap_or_default());
        plain = i + 1;
        if escaped.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(c >> 4)]);
            out.push(HEX[usize::from(c & 0xf)]);
        } else {
            out.extend_from_slice(escaped);
        }
    }
    out.extend_from_slice(bytes.get(plain..).unwrap_or_default());
    out.push(b'"');
}

fn write_u64_field(out: &mut Vec<u8>, name: &str, v: u64) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    write_u64(out, v);
}

fn write_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(i..).unwrap_or_default());
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

fn write_trace_id(out: &mut Vec<u8>, id: Option<[u8; 16]>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match id {
        Some(id) => {
            out.push(b'"');
            for b in id {
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// Writes `t` as RFC 3339 in UTC with milliseconds (`2026-12-04T10:24:47.123Z`); a time
/// before 1970 is written as the epoch.
pub fn write_rfc3339_ms(out: &mut Vec<u8>, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    // Calls of one second share their date and time: each thread keeps the last one.
    thread_local! {
        static LAST: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    }
    let (last, text) = LAST.with(std::cell::Cell::get);
    if last == secs {
        out.extend_from_slice(&text);
    } else {
        let start = out.len();
        write_seconds(out, secs);
        if let Some(written) = out.get(start..).and_then(|w| <[u8; 19]>::try_from(w).ok()) {
            LAST.with(|l| l.set((secs, written)));
        }
    }
    out.push(b'.');
    write_padded(out, u64::from(since.subsec_millis()), 3);
    out.push(b'Z');
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
    fn times_are_rfc3339_utc_with_milliseconds() {
        let at = |secs: u64, ms: u64| {
            let mut out = Vec::new();
            write_rfc3339_ms(
                &mut out,
                UNIX_EPOCH + Duration::from_millis(secs * 1000 + ms),
            );
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

    fn sample(line: &mut Line, trace: Option<[u8; 16]>) {
        line.start(&CallStart {
            time: UNIX_EPOCH + Duration::from_millis(1_796_380_287_123),
            caller: "127.0.0.1:5000".parse().ok(),
            caller_identity: Some("spiffe://mesh/consumer"),
            front: "http",
            service: "com.example.Svc\"\n",
            method: "hello",
            version: "1.0",
            group: "",
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
