//! Span export for dubbo-mesh's agents, OTLP over HTTP with protobuf bodies.
//!
//! The loops hand finished spans ([`SpanData`]) to their [`Spans`] handle, which
//! encodes each at once into its own queue of protobuf bytes (a lock no other loop
//! takes; the exporter thread takes it only to swap the bytes out), so that a span is
//! never copied or moved between threads, and a call never waits: a full queue drops
//! the span and counts it. One exporter thread takes the loops' bytes every [`POLL`]
//! and POSTs them, in batches of up to [`Config::batch`] spans, when a batch is full
//! or [`Config::interval`] after its first span, as an `ExportTraceServiceRequest`
//! with `Content-Type: application/x-protobuf` over a plain HTTP/1.1 connection with
//! connect, write and read timeouts, kept from one POST to the next while the
//! collector keeps it (a connection the collector closed while idle is replaced, and
//! the POST made again on the new one). The request is the bytes prost writes for the
//! `opentelemetry-proto` messages (the tests compare them), but written field by field,
//! no message built: the resource and scope are encoded once, and what repeats from
//! span to span (a method's name and attributes, an address, how spans end) once per
//! handle, so that a span costs little more than copying those pieces.
//!
//! A span is dropped, and counted ([`Stats::dropped`]), when its loop's queue is full
//! (the collector is slow or down and the exporter thread is waiting on it) or when its
//! batch could not be delivered (connection refused, timeout, a status other than 2xx).
//! Nothing is retried: tracing is best effort, calls come first.
//!
//! The exporter thread looks every [`POLL`] (less often when quiet, down to every
//! [`IDLE_POLL`]) rather than being woken: waking it would be a futex call and a
//! context switch per span when spans come one at a time. [`Spans::close`] (an agent's
//! stop) sends what is queued, within a deadline, and joins the thread.
//!
//! # Examples
//!
//! ```no_run
//! use reactor_admin::otlp::{CallNames, Config, Endpoint, SpanData, SpanKind};
//!
//! let endpoint = Endpoint::parse("http://127.0.0.1:4318").unwrap();
//! let (spans, _exporter) = reactor_admin::otlp::start(Config::new(endpoint, "consumer-agent")).unwrap();
//! let names = CallNames::new("a.Svc", "m", "1.0", "");
//! let mut span = SpanData::new([1; 16], [2; 8], SpanKind::Client, names);
//! span.end_unix_nanos = span.start_unix_nanos + 1000;
//! spans.send(&span);
//! ```

#![deny(missing_docs)]

use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
#[cfg(test)]
use opentelemetry_proto::tonic::trace::v1::{span, status, Span, Status};

/// The path POSTed to when the endpoint names none (OTLP/HTTP's default).
pub const DEFAULT_PATH: &str = "/v1/traces";
/// The port when the endpoint names none (OTLP/HTTP's default).
pub const DEFAULT_PORT: u16 = 4318;
/// How often the exporter thread takes the queued spans while they come (a batch
/// waits up to [`Config::interval`] anyway; fewer wake-ups cost less).
pub const POLL: Duration = Duration::from_millis(50);
/// How often at least it looks while none comes.
pub const IDLE_POLL: Duration = Duration::from_millis(100);

/// Where spans go: `http://host[:port][/path]` (`https` is not spoken).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port` as given, for connecting and the `Host` header.
    pub authority: String,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Request path, [`DEFAULT_PATH`] when none was given.
    pub path: String,
}

impl Endpoint {
    /// Parses `http://host[:port][/path]`.
    ///
    /// # Errors
    ///
    /// A message saying what is wrong (another scheme, no host, a bad port).
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?}: the OTLP endpoint must be an http:// URL"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let path = match path {
            "" | "/" => DEFAULT_PATH.to_owned(),
            p => p.to_owned(),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url:?}: no host in the OTLP endpoint"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed [ in the host"))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("{url:?}: bad port {p:?}"))?,
        };
        if host.is_empty() || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!("{url:?}: bad host or path"));
        }
        Ok(Endpoint {
            authority: authority.to_owned(),
            host: host.to_owned(),
            port,
            path,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// The exporter's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The collector.
    pub endpoint: Endpoint,
    /// The resource attribute `service.name`.
    pub service_name: String,
    /// Spans queued at most between the loops and the exporter thread.
    pub queue: usize,
    /// Spans per POST at most.
    pub batch: usize,
    /// A batch is sent at the latest this long after its first span.
    pub interval: Duration,
    /// Connect, write and read timeout of one POST (and its whole time at most twice
    /// this).
    pub timeout: Duration,
}

impl Config {
    /// The defaults: a queue of 8192 spans, batches of up to 512 spans or 1 s, a 2 s
    /// timeout.
    pub fn new(endpoint: Endpoint, service_name: &str) -> Config {
        Config {
            endpoint,
            service_name: service_name.to_owned(),
            queue: 8192,
            batch: 512,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
        }
    }
}

/// A span's kind (OTLP's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// An outgoing call (the consumer-agent's).
    Client,
    /// An incoming call served (the provider-agent's).
    Server,
    /// Inside one process (a retry attempt).
    Internal,
}

/// A call's service, method, version and group, in one shared allocation: a clone
/// (for each span of the same method, see [`CallNames::is`]) copies nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallNames {
    /// `None`: all empty.
    text: Option<Arc<str>>,
    /// Where method, version and group begin in `text`.
    at: [usize; 3],
}

impl CallNames {
    /// The names of a call.
    pub fn new(service: &str, method: &str, version: &str, group: &str) -> CallNames {
        let mut text =
            String::with_capacity(service.len() + method.len() + version.len() + group.len());
        let mut at = [0; 3];
        for (i, part) in [service, method, version, group].into_iter().enumerate() {
            if let Some(slot) = i.checked_sub(1).and_then(|i| at.get_mut(i)) {
                *slot = text.len();
            }
            text.push_str(part);
        }
        CallNames {
            text: Some(text.into()),
            at,
        }
    }

    /// Whether `other` is a clone of these names (the same shared text): an identity,
    /// not a comparison of the names (two separately made copies of equal names are not
    /// the same).
    pub fn same(&self, other: &CallNames) -> bool {
        self.at == other.at
            && match (&self.text, &other.text) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }

    /// Whether these are the names given (to reuse them rather than make new ones).
    pub fn is(&self, service: &str, method: &str, version: &str, group: &str) -> bool {
        let text = self.text.as_deref().unwrap_or_default();
        text.len() == service.len() + method.len() + version.len() + group.len()
            && self.at[0] == service.len()
            && self.at[1] == service.len() + method.len()
            && text.starts_with(service)
            && self.method() == method
            && self.version() == version
            && self.group() == group
    }

    fn part(&self, i: usize) -> &str {
        let text = self.text.as_deref().unwrap_or_default();
        let start = if i == 0 {
            0
        } else {
            self.at.get(i - 1).copied().unwrap_or(0)
        };
        let end = self.at.get(i).copied().unwrap_or(text.len());
        text.get(start..end).unwrap_or_default()
    }

    /// The service (Dubbo interface).
    pub fn service(&self) -> &str {
        self.part(0)
    }

    /// The method.
    pub fn method(&self) -> &str {
        self.part(1)
    }

    /// The version.
    pub fn version(&self) -> &str {
        self.part(2)
    }

    /// The group.
    pub fn group(&self) -> &str {
        self.part(3)
    }
}

/// The names of the calls a loop traced lately, so that the spans of one method share
/// one [`CallNames`] instead of each copying the names.
#[derive(Debug, Default)]
pub struct NamesCache {
    recent: Vec<CallNames>,
    /// The entry replaced next once full.
    next: usize,
}

impl NamesCache {
    /// Entries kept.
    const SIZE: usize = 32;

    /// These names: a clone of the ones kept, or new ones (then kept).
    pub fn get(&mut self, service: &str, method: &str, version: &str, group: &str) -> CallNames {
        if let Some(n) = self
            .recent
            .iter()
            .find(|n| n.is(service, method, version, group))
        {
            return n.clone();
        }
        let n = CallNames::new(service, method, version, group);
        if self.recent.len() < Self::SIZE {
            self.recent.push(n.clone());
        } else if let Some(slot) = self.recent.get_mut(self.next % Self::SIZE) {
            *slot = n.clone();
            self.next = self.next.wrapping_add(1);
        }
        n
    }
}

/// One finished span of a Dubbo call, as the loops hand it over: its name is
/// `service/method`, its attributes `rpc.system` (`dubbo`), `rpc.service`,
/// `rpc.method`, `dubbo.version` and `dubbo.group` (when not empty), `server.address`,
/// `client.address`, `mesh.front`, `mesh.status`, `mesh.retries` and `mesh.attempt`
/// (those known). Kept
/// small and cheap to make (one allocation, the names); the exporter thread makes the
/// OTLP message of it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanData {
    /// The trace.
    pub trace_id: [u8; 16],
    /// This span.
    pub span_id: [u8; 8],
    /// Its parent (none for a root span).
    pub parent_span_id: Option<[u8; 8]>,
    /// Its kind.
    pub kind: SpanKind,
    /// Start, Unix time in nanoseconds.
    pub start_unix_nanos: u64,
    /// End, Unix time in nanoseconds.
    pub end_unix_nanos: u64,
    /// Whether it failed (OTLP status ERROR with `status` as its message, else OK).
    pub error: bool,
    /// How the call ended (`ok`, `timeout`, ...): `mesh.status`.
    pub status: &'static str,
    /// The front-end that took the call (`http`, `dubbo`, `agent`): `mesh.front`.
    pub front: &'static str,
    /// The call's names.
    pub call: CallNames,
    /// The address called (provider-agent or provider): `server.address`.
    pub server: Option<SocketAddr>,
    /// The caller's address: `client.address`.
    pub client: Option<SocketAddr>,
    /// Retries the call took: `mesh.retries`.
    pub retries: Option<u32>,
    /// Which attempt of its call this span is (retries' spans): `mesh.attempt`.
    pub attempt: Option<u32>,
    /// W3C `tracestate` of the span, if any.
    pub trace_state: String,
}

impl SpanData {
    /// A span starting now, no parent, status `ok`.
    pub fn new(trace_id: [u8; 16], span_id: [u8; 8], kind: SpanKind, call: CallNames) -> SpanData {
        SpanData::starting_at(trace_id, span_id, kind, call, unix_nanos())
    }

    /// A span starting at `start_unix_nanos` (a loop's clock of the moment, see
    /// [`unix_nanos_of`]), no parent, status `ok`.
    pub fn starting_at(
        trace_id: [u8; 16],
        span_id: [u8; 8],
        kind: SpanKind,
        call: CallNames,
        start_unix_nanos: u64,
    ) -> SpanData {
        SpanData {
            trace_id,
            span_id,
            parent_span_id: None,
            kind,
            start_unix_nanos,
            end_unix_nanos: 0,
            error: false,
            status: "ok",
            front: "",
            call,
            server: None,
            client: None,
            retries: None,
            attempt: None,
            trace_state: String::new(),
        }
    }
}

/// The wall clock as Unix nanoseconds (0 before 1970).
pub fn unix_nanos() -> u64 {
    unix_nanos_of(SystemTime::now())
}

/// `t` as Unix nanoseconds (0 before 1970).
pub fn unix_nanos_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// What the exporter did, for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    exported: AtomicU64,
    dropped: AtomicU64,
    failed_posts: AtomicU64,
}

impl Stats {
    /// Spans the collector accepted (a 2xx answer).
    pub fn exported(&self) -> u64 {
        self.exported.load(Relaxed)
    }

    /// Spans dropped: the queue was full, or their batch was not delivered.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// POSTs that failed (refused, timed out, or not answered 2xx).
    pub fn failed_posts(&self) -> u64 {
        self.failed_posts.load(Relaxed)
    }
}

/// A loop's handle: queues finished spans for the exporter thread without waiting.
/// Each clone has a queue of its own (give each loop one).
#[derive(Debug)]
pub struct Spans {
    sink: Sink,
    stats: Arc<Stats>,
    control: Arc<Control>,
}

/// Where a handle's spans go.
#[derive(Debug)]
enum Sink {
    /// Encoded into this handle's queue, for the exporter thread.
    Queue(Arc<Mutex<Queue>>),
    /// As they are, to whoever reads the channel ([`Spans::bounded`]).
    Channel(Sender<SpanData>),
}

/// One handle's spans, encoded, waiting for the exporter thread.
#[derive(Debug, Default)]
struct Queue {
    /// `ScopeSpans.spans` fields, one after the other.
    bytes: Vec<u8>,
    /// How many.
    count: usize,
    /// What this handle's spans share, encoded once.
    cache: SpanCache,
}

/// What the handles and the exporter thread share.
#[derive(Debug, Default)]
struct Control {
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Set by [`Spans::close`]: send what is queued by then, and end.
    stop: Mutex<Option<Instant>>,
    /// Every handle's queue (a dropped handle's stays until emptied).
    queues: Mutex<Vec<Arc<Mutex<Queue>>>>,
    /// Spans queued per handle at most ([`Config::queue`]).
    capacity: usize,
    /// Handles alive: none left, the exporter sends what is queued and ends.
    handles: AtomicUsize,
    /// Closed: spans sent from now on are dropped.
    closed: AtomicBool,
}

impl Control {
    fn new(capacity: usize) -> Control {
        Control {
            capacity: capacity.max(1),
            ..Control::default()
        }
    }

    fn take_thread(&self) -> Option<JoinHandle<()>> {
        self.thread.lock().ok().and_then(|mut t| t.take())
    }

    fn stop_by(&self) -> Option<Instant> {
        self.stop.lock().ok().and_then(|s| *s)
    }

    /// A new handle's queue, registered for the exporter.
    fn new_queue(&self) -> Arc<Mutex<Queue>> {
        let q = Arc::new(Mutex::new(Queue::default()));
        if let Ok(mut queues) = self.queues.lock() {
            queues.push(q.clone());
        }
        q
    }
}

impl Clone for Spans {
    /// Another handle on the same exporter, with a queue of its own.
    fn clone(&self) -> Spans {
        let sink = match &self.sink {
            Sink::Queue(_) => Sink::Queue(self.control.new_queue()),
            Sink::Channel(tx) => Sink::Channel(tx.clone()),
        };
        self.control.handles.fetch_add(1, Relaxed);
        Spans {
            sink,
            stats: self.stats.clone(),
            control: self.control.clone(),
        }
    }
}

impl Drop for Spans {
    fn drop(&mut self) {
        self.control.handles.fetch_sub(1, Release);
    }
}

impl Spans {
    /// A handle on a bounded queue of `capacity` spans that the caller reads itself
    /// instead of an exporter thread (tests, or another sink); each span is cloned into
    /// it.
    pub fn bounded(capacity: usize) -> (Spans, Receiver<SpanData>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let spans = Spans {
            sink: Sink::Channel(tx),
            stats: Arc::default(),
            control: Arc::new(Control::new(capacity)),
        };
        spans.control.handles.fetch_add(1, Relaxed);
        (spans, rx)
    }

    /// Stops the exporter thread (an agent's stop): what is queued is sent, in
    /// batches, as long as `within` allows (each POST's timeouts shortened to it; what
    /// is left then is dropped and counted), and the thread joined. Waits at most
    /// `within` (and a little): false if the thread had not ended by then (it is left
    /// to end on its own). Spans sent afterwards are dropped and counted. Without an
    /// exporter thread ([`Spans::bounded`]), or once closed, it returns true at once.
    pub fn close(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let Some(thread) = self.control.take_thread() else {
            return true;
        };
        if let Ok(mut stop) = self.control.stop.lock() {
            *stop = Some(deadline);
        }
        thread.thread().unpark();
        while !thread.is_finished() {
            if Instant::now() >= deadline + Duration::from_millis(100) {
                log::warn!("the OTLP exporter did not finish within {within:?}");
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = thread.join();
        true
    }

    /// Queues a finished span, encoded here; if this handle's queue is full (or the
    /// exporter closed) it is dropped and counted.
    pub fn send(&self, span: &SpanData) {
        let queued = match &self.sink {
            Sink::Queue(q) => {
                !self.control.closed.load(Relaxed)
                    && q.lock().is_ok_and(|mut q| {
                        if q.count >= self.control.capacity {
                            return false;
                        }
                        let Queue {
                            bytes,
                            count,
                            cache,
                        } = &mut *q;
                        encode_span(bytes, span, cache);
                        *count += 1;
                        true
                    })
            }
            Sink::Channel(tx) => tx.try_send(span.clone()).is_ok(),
        };
        if !queued {
            self.stats.dropped.fetch_add(1, Relaxed);
        }
    }

    /// The exporter's counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}

/// The exporter thread. It exits once every [`Spans`] handle is dropped, after sending
/// what is queued, or when [`Spans::close`] says so.
#[derive(Debug)]
pub struct Exporter {
    control: Arc<Control>,
}

impl Exporter {
    /// Waits for the thread to finish (every [`Spans`] must be dropped first, or one
    /// closed).
    pub fn join(self) {
        if let Some(t) = self.control.take_thread() {
            let _ = t.join();
        }
    }
}

/// A sampling rate flag (`--trace-sample-rate`): a number from 0 to 1.
///
/// # Errors
/// Anything else, with a message saying so.
pub fn parse_sample_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a rate from 0.0 to 1.0")),
    }
}

/// Starts the exporter an agent's flags ask for: `--otlp-endpoint` (`None` without
/// one), `--trace-sample-rate`, and the resource's `service.name`. The thread ends when
/// every [`Spans`] is dropped, or one is closed ([`Spans::close`], an agent's stop).
///
/// # Errors
/// A bad endpoint, a sample rate without an endpoint, or no thread for the exporter;
/// the message names the flag.
pub fn from_flags(
    endpoint: Option<&str>,
    sample_rate: f64,
    service_name: &str,
) -> Result<Option<Spans>, String> {
    let Some(url) = endpoint else {
        if sample_rate > 0.0 {
            return Err("--trace-sample-rate needs --otlp-endpoint (where the spans go)".into());
        }
        return Ok(None);
    };
    let endpoint = Endpoint::parse(url).map_err(|e| format!("--otlp-endpoint {e}"))?;
    log::info!("tracing: spans to {endpoint}, sampling {sample_rate} of untraced calls");
    let (spans, _exporter) =
        start(Config::new(endpoint, service_name)).map_err(|e| format!("--otlp-endpoint: {e}"))?;
    Ok(Some(spans))
}

/// Starts the exporter thread.
///
/// # Errors
///
/// The thread could not be spawned.
pub fn start(config: Config) -> io::Result<(Spans, Exporter)> {
    let stats = Arc::new(Stats::default());
    let control = Arc::new(Control::new(config.queue));
    let spans = Spans {
        sink: Sink::Queue(control.new_queue()),
        stats: stats.clone(),
        control: control.clone(),
    };
    control.handles.fetch_add(1, Relaxed);
    let worker = Worker::new(config, stats);
    let c = control.clone();
    let thread = std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || worker.run(&c))?;
    if let Ok(mut t) = control.thread.lock() {
        *t = Some(thread);
    }
    Ok((spans, Exporter { control }))
}

struct Worker {
    config: Config,
    stats: Arc<Stats>,
    body: Vec<u8>,
    head: Vec<u8>,
    /// The resource (`service.name`) and scope of every request (the tests' reference).
    #[cfg(test)]
    resource: Resource,
    #[cfg(test)]
    scope: InstrumentationScope,
    /// `resource` encoded as `ResourceSpans.resource`, once.
    resource_bytes: Vec<u8>,
    /// `scope` encoded as `ScopeSpans.scope`, once.
    scope_bytes: Vec<u8>,
    /// The loops' queued bytes as taken (not copied), each with how many spans it
    /// holds; the first is sent from `front` on.
    chunks: std::collections::VecDeque<(Vec<u8>, usize)>,
    front: usize,
    /// Spans in `chunks` not sent yet.
    pending: usize,
    /// When the first of them was taken.
    first_at: Instant,
    /// Emptied chunks, each given to a queue in exchange for its bytes.
    spare: Vec<Vec<u8>>,
    /// A batch's pieces: (chunk, start, end).
    parts: Vec<(usize, usize, usize)>,
    /// The queues, as listed at a take (the list's lock is not held while taking).
    queues: Vec<Arc<Mutex<Queue>>>,
    /// Spans encoded by [`Worker::add`] (tests and benches), and what they share.
    spans: Vec<u8>,
    cache: SpanCache,
    /// The connection to the collector, kept from one POST to the next while it
    /// allows (a connection per POST cost both ends a handshake and a close), and
    /// the timeout its socket is set to.
    conn: Option<(TcpStream, Duration)>,
}

impl Worker {
    /// Takes what the loops queued every [`POLL`] (see the module's notes) and sends
    /// it when a batch is full or [`Config::interval`] after its first span; ends when
    /// told to stop ([`Spans::close`]) or when no handle is left, once what is queued
    /// is sent.
    fn run(mut self, control: &Control) {
        let max = self.config.batch.max(1);
        let mut idle = Duration::ZERO;
        loop {
            let got = self.take(control);
            if let Some(deadline) = control.stop_by() {
                control.closed.store(true, Relaxed);
                self.take(control);
                self.export(Some(deadline), false);
                // Queued while it closed: dropped.
                if self.take(control) {
                    self.stats.dropped.fetch_add(self.pending as u64, Relaxed);
                }
                return;
            }
            if control.handles.load(Acquire) == 0 {
                self.take(control);
                return self.export(None, false);
            }
            if self.pending > 0 && self.first_at.elapsed() >= self.config.interval {
                self.export(None, false);
            } else if self.pending >= max {
                self.export(None, true);
            }
            idle = if got {
                POLL
            } else {
                (idle + POLL).min(IDLE_POLL)
            };
            let wait = if self.pending == 0 {
                idle
            } else {
                idle.min(self.config.interval.saturating_sub(self.first_at.elapsed()))
            };
            std::thread::park_timeout(wait.max(Duration::from_millis(1)));
        }
    }

    /// Takes the spans every queue holds (each queue locked only to swap its bytes
    /// out for an empty buffer): false if there were none. Queues of dropped handles go
    /// once empty.
    fn take(&mut self, control: &Control) -> bool {
        if let Ok(mut queues) = control.queues.lock() {
            queues.retain(|q| Arc::strong_count(q) > 1 || q.lock().is_ok_and(|q| q.count > 0));
            self.queues.extend(queues.iter().cloned());
        }
        let mut got = false;
        for q in self.queues.drain(..) {
            let taken = match q.lock() {
                Ok(mut q) if q.count > 0 => {
                    let mut bytes = self.spare.pop().unwrap_or_default();
                    std::mem::swap(&mut q.bytes, &mut bytes);
                    (bytes, std::mem::take(&mut q.count))
                }
                _ => continue,
            };
            if self.pending == 0 {
                self.first_at = Instant::now();
            }
            self.pending += taken.1;
            self.chunks.push_back(taken);
            got = true;
        }
        got
    }

    /// Sends the spans taken, in batches of [`Config::batch`] at most (`full_only`:
    /// only full batches, the rest waits for more). With a `deadline` (a stop), each
    /// POST's timeouts are cut to what is left of it, and what is left once it has
    /// passed is dropped and counted.
    fn export(&mut self, deadline: Option<Instant>, full_only: bool) {
        let max = self.config.batch.max(1);
        while self.pending > 0 && !(full_only && self.pending < max) {
            let timeout = match deadline {
                None => self.config.timeout,
                Some(d) => match d.saturating_duration_since(Instant::now()) {
                    left if left.is_zero() => break,
                    left => left.min(self.config.timeout),
                },
            };
            // The batch: up to `max` spans from the front, across chunks.
            self.parts.clear();
            let (mut n, mut len) = (0, 0);
            let (mut c, mut at) = (0, self.front);
            while n < max {
                let Some((bytes, _)) = self.chunks.get(c) else {
                    break;
                };
                let (l, k) = split_spans(bytes.get(at..).unwrap_or_default(), max - n);
                if k > 0 {
                    self.parts.push((c, at, at + l));
                }
                n += k;
                len += l;
                at += l;
                if at < bytes.len() && k > 0 {
                    break; // the batch is full
                }
                // This chunk is done (or holds no whole span more): the next one.
                c += 1;
                at = 0;
            }
            if n == 0 {
                break;
            }
            self.post_batch(len, n, timeout);
            self.pending -= n;
            for _ in 0..c {
                self.recycle_front();
            }
            self.front = at;
        }
        if full_only && self.pending > 0 {
            // The rest waits, as the batch it begins.
            self.first_at = Instant::now();
            return;
        }
        if self.pending > 0 {
            self.stats.dropped.fetch_add(self.pending as u64, Relaxed);
        }
        while !self.chunks.is_empty() {
            self.recycle_front();
        }
        self.front = 0;
        self.pending = 0;
    }

    /// The first chunk, sent: its buffer kept for a queue.
    fn recycle_front(&mut self) {
        if let Some((mut bytes, _)) = self.chunks.pop_front() {
            bytes.clear();
            self.spare.push(bytes);
        }
    }

    fn new(config: Config, stats: Arc<Stats>) -> Worker {
        let resource = Resource {
            attributes: vec![KeyValue {
                key: "service.name".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(config.service_name.clone())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let scope = InstrumentationScope {
            name: "dubbo-mesh".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let mut resource_bytes = Vec::new();
        prost::encoding::message::encode(1, &resource, &mut resource_bytes); // ResourceSpans.resource = 1
        let mut scope_bytes = Vec::new();
        prost::encoding::message::encode(1, &scope, &mut scope_bytes); // ScopeSpans.scope = 1
        Worker {
            config,
            stats,
            body: Vec::new(),
            head: Vec::new(),
            #[cfg(test)]
            resource,
            #[cfg(test)]
            scope,
            resource_bytes,
            scope_bytes,
            chunks: Default::default(),
            front: 0,
            pending: 0,
            first_at: Instant::now(),
            spare: Vec::new(),
            parts: Vec::new(),
            queues: Vec::new(),
            spans: Vec::new(),
            cache: SpanCache::default(),
            conn: None,
        }
    }

    /// Encodes `batch` (emptied) into `self.body` as one `ExportTraceServiceRequest`
    /// with one `ResourceSpans` holding one `ScopeSpans`. The resource and the scope
    /// were encoded once ([`Worker::new`]); each span is written field by field
    /// ([`encode_span`]), with no message built, in the bytes prost writes for the
    /// `opentelemetry-proto` message (see the tests); the request's framing goes around
    /// them.
    fn encode(&mut self, batch: &mut Vec<SpanData>) {
        for data in batch.drain(..) {
            self.add(&data);
        }
        self.frame(self.spans.len());
        self.body.extend_from_slice(&self.spans);
        self.spans.clear();
    }

    /// Adds a span to the batch (encoded as it comes).
    fn add(&mut self, data: &SpanData) {
        encode_span(&mut self.spans, data, &mut self.cache);
    }

    /// The start of a request of `spans_len` bytes of spans, in `self.body`: the spans
    /// follow (a POST writes them from where they are, not copied after it).
    fn frame(&mut self, spans_len: usize) {
        let scope_spans_len = self.scope_bytes.len() + spans_len;
        // ResourceSpans.scope_spans = 2
        let scope_head = 1 + varint_len(scope_spans_len as u64);
        let resource_spans_len = self.resource_bytes.len() + scope_head + scope_spans_len;
        self.body.clear();
        self.body.reserve(resource_spans_len + 8);
        self.body.push(key(1, LEN)); // request.resource_spans = 1
        put_varint(&mut self.body, resource_spans_len as u64);
        self.body.extend_from_slice(&self.resource_bytes);
        self.body.push(key(2, LEN));
        put_varint(&mut self.body, scope_spans_len as u64);
        self.body.extend_from_slice(&self.scope_bytes);
    }

    /// Sends the `n` spans of `self.parts` (`len` bytes) as one request, each step of
    /// the POST within `timeout`.
    fn post_batch(&mut self, len: usize, n: usize, timeout: Duration) {
        let n = n as u64;
        self.frame(len);
        match self.post(len, timeout) {
            Ok(status) if (200..300).contains(&status) => {
                self.stats.exported.fetch_add(n, Relaxed);
            }
            Ok(status) => {
                log::debug!(
                    "OTLP collector {} answered {status}: {n} spans dropped",
                    self.config.endpoint
                );
                self.failed(n);
            }
            Err(e) => {
                log::debug!(
                    "OTLP collector {}: {e}: {n} spans dropped",
                    self.config.endpoint
                );
                self.failed(n);
            }
        }
    }

    fn failed(&self, n: u64) {
        self.stats.failed_posts.fetch_add(1, Relaxed);
        self.stats.dropped.fetch_add(n, Relaxed);
    }

    /// One POST of the request framed in `self.body` with the `len` bytes of spans in
    /// `self.parts`: the answer's status code. On the kept connection if there is one;
    /// if that fails before any byte of an answer (the collector closed it while idle),
    /// once more on a new one.
    fn post(&mut self, len: usize, timeout: Duration) -> io::Result<u16> {
        if let Some(conn) = self.conn.take() {
            match self.exchange(conn, len, timeout) {
                Ok(status) => return Ok(status),
                Err((false, _)) => {}
                Err((true, e)) => return Err(e),
            }
        }
        let stream = self.connect(timeout)?;
        self.exchange((stream, Duration::ZERO), len, timeout)
            .map_err(|(_, e)| e)
    }

    /// A new connection to the collector, within `timeout`.
    fn connect(&self, timeout: Duration) -> io::Result<TcpStream> {
        let ep = &self.config.endpoint;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address for the host");
        for addr in (ep.host.as_str(), ep.port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Writes the request on `conn` and reads the answer's head (and its body, to
    /// keep the connection for the next request when the collector allows): its status
    /// code, or the error and whether any of the answer had come.
    fn exchange(
        &mut self,
        (mut stream, set): (TcpStream, Duration),
        len: usize,
        timeout: Duration,
    ) -> Result<u16, (bool, io::Error)> {
        let unanswered = |e| (false, e);
        if set != timeout {
            stream
                .set_write_timeout(Some(timeout))
                .map_err(unanswered)?;
            stream.set_read_timeout(Some(timeout)).map_err(unanswered)?;
        }
        let started = Instant::now();
        let ep = &self.config.endpoint;
        self.head.clear();
        write!(
            self.head,
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nUser-Agent: dubbo-mesh\r\n\r\n",
            ep.path,
            ep.authority,
            self.body.len() + len
        )
        .map_err(unanswered)?;
        // The head, the request's start and the spans in as few writes as the socket
        // takes.
        let mut slices = Vec::with_capacity(2 + self.parts.len());
        slices.push(IoSlice::new(&self.head));
        slices.push(IoSlice::new(&self.body));
        for &(c, start, end) in &self.parts {
            let part = (self.chunks.get(c)).and_then(|(bytes, _)| bytes.get(start..end));
            slices.push(IoSlice::new(part.unwrap_or_default()));
        }
        write_all_vectored(&mut stream, &mut slices).map_err(unanswered)?;
        let answer = read_answer(&mut stream, started + 2 * timeout)?;
        if answer.keep {
            self.conn = Some((stream, timeout));
        }
        Ok(answer.status)
    }
}

/// What [`read_answer`] found.
struct Answer {
    status: u16,
    /// The whole answer was read and the collector keeps the connection open.
    keep: bool,
}

/// Answers with a body larger than this are not read through: the connection closes.
const MAX_ANSWER_BODY: usize = 64 * 1024;

/// Reads an HTTP/1.1 answer's head, and its body when it has a `Content-Length` of
/// at most [`MAX_ANSWER_BODY`], all by `deadline` (a collector trickling bytes does
/// not hold the thread longer). The error says whether any byte had come.
fn read_answer(stream: &mut TcpStream, deadline: Instant) -> Result<Answer, (bool, io::Error)> {
    let mut got = [0u8; 4096];
    let mut len = 0;
    let head_end = loop {
        if Instant::now() > deadline {
            return Err((
                len > 0,
                io::Error::new(io::ErrorKind::TimedOut, "answer too slow"),
            ));
        }
        let Some(room) = got.get_mut(len..).filter(|r| !r.is_empty()) else {
            // A head larger than the buffer: its status is all we take.
            break len;
        };
        match stream.read(room) {
            Ok(0) if len == 0 => {
                return Err((false, io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(0) => break len,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err((len > 0, e)),
        }
        if let Some(i) = got
            .get(..len)
            .and_then(|g| g.windows(4).position(|w| w == b"\r\n\r\n"))
        {
            break i + 4;
        }
    };
    let head = got.get(..head_end).unwrap_or_default();
    let status = parse_status(head).ok_or_else(|| {
        (
            true,
            io::Error::new(io::ErrorKind::InvalidData, "not an HTTP answer"),
        )
    })?;
    let body = head
        .ends_with(b"\r\n\r\n")
        .then(|| answer_body_len(head))
        .flatten();
    let Some(body) = body.filter(|&n| n <= MAX_ANSWER_BODY) else {
        return Ok(Answer {
            status,
            keep: false,
        });
    };
    // The body's bytes that came with the head, then the rest, read and dropped.
    let mut left = body.saturating_sub(len - head_end);
    while left > 0 {
        if Instant::now() > deadline {
            return Ok(Answer {
                status,
                keep: false,
            });
        }
        let room = got.len().min(left);
        match stream.read(got.get_mut(..room).unwrap_or_default()) {
            Ok(0) => {
                return Ok(Answer {
                    status,
                    keep: false,
                })
            }
            Ok(n) => left = left.saturating_sub(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                return Ok(Answer {
                    status,
                    keep: false,
                })
            }
        }
    }
    Ok(Answer {
        status,
        keep: len - head_end <= body,
    })
}

/// The length of the body an answer's head announces, if the connection stays open
/// after it: `None` for `Connection: close`, chunked bodies or no `Content-Length`.
fn answer_body_len(head: &[u8]) -> Option<usize> {
    let mut length = None;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        let value = value.get(1..).unwrap_or_default().trim_ascii();
        let closes =
            name.eq_ignore_ascii_case(b"connection") && value.eq_ignore_ascii_case(b"close");
        if closes || name.eq_ignore_ascii_case(b"transfer-encoding") {
            return None;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            length = Some(std::str::from_utf8(value).ok()?.parse::<usize>().ok()?);
        }
    }
    length
}

/// Writes every byte of `slices`, in as few `writev` calls as the socket takes.
fn write_all_vectored(stream: &mut TcpStream, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match stream.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[doc(hidden)]
/// The bytes of the requests `spans` make, in batches of 512 (for measuring the
/// exporter's cost; not part of the API).
pub fn encode_for_bench(spans: Vec<SpanData>, service: &str) -> usize {
    let Ok(endpoint) = Endpoint::parse("http://127.0.0.1:1") else {
        return 0;
    };
    let mut w = Worker::new(Config::new(endpoint, service), Arc::default());
    let mut total = 0;
    let mut spans = spans.into_iter();
    let mut batch = Vec::with_capacity(512);
    loop {
        batch.extend(spans.by_ref().take(512));
        if batch.is_empty() {
            return total;
        }
        w.encode(&mut batch);
        total += w.body.len();
    }
}

/// The status code of `HTTP/1.x NNN ...`.
fn parse_status(answer: &[u8]) -> Option<u16> {
    let rest = answer.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// Sets `out` to `bytes`, reusing its allocation.
#[cfg(test)]
fn set_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.clear();
    out.extend_from_slice(bytes);
}

/// Writes the attributes of a span message, one after the other, reusing the key and
/// value strings a message already has from an earlier batch.
#[cfg(test)]
struct Attrs<'a> {
    kvs: &'a mut Vec<KeyValue>,
    n: usize,
}

#[cfg(test)]
impl Attrs<'_> {
    /// The next attribute's value, its key set.
    fn slot(&mut self, key: &str) -> Option<&mut Option<any_value::Value>> {
        let i = self.n;
        self.n += 1;
        if self.kvs.len() <= i {
            self.kvs.push(KeyValue::default());
        }
        let kv = self.kvs.get_mut(i)?;
        if kv.key != key {
            kv.key.clear();
            kv.key.push_str(key);
        }
        Some(&mut kv.value.get_or_insert_with(AnyValue::default).value)
    }

    fn str(&mut self, key: &str, value: &str) {
        match self.slot(key) {
            Some(Some(any_value::Value::StringValue(s))) => {
                s.clear();
                s.push_str(value);
            }
            Some(v) => *v = Some(any_value::Value::StringValue(value.to_owned())),
            None => {}
        }
    }

    fn addr(&mut self, key: &str, value: SocketAddr, cache: &mut AddrCache) {
        self.str(key, cache.text(value));
    }

    fn int(&mut self, key: &str, value: i64) {
        if let Some(v) = self.slot(key) {
            *v = Some(any_value::Value::IntValue(value));
        }
    }

    fn finish(self) {
        self.kvs.truncate(self.n);
    }
}

/// Addresses as text, the last few kept (an agent talks to few peers): formatting an
/// address costs more than the rest of a span.
#[derive(Debug, Default)]
struct AddrCache {
    entries: Vec<(SocketAddr, String)>,
    next: usize,
}

impl AddrCache {
    const SIZE: usize = 64;

    fn text(&mut self, addr: SocketAddr) -> &str {
        let i = match self.entries.iter().position(|(a, _)| *a == addr) {
            Some(i) => i,
            None if self.entries.len() < Self::SIZE => {
                self.entries.push((addr, addr.to_string()));
                self.entries.len() - 1
            }
            None => {
                let i = self.next % Self::SIZE;
                self.next = self.next.wrapping_add(1);
                if let Some(e) = self.entries.get_mut(i) {
                    *e = (addr, addr.to_string());
                }
                i
            }
        };
        self.entries.get(i).map_or("", |(_, t)| t.as_str())
    }
}

/// Makes `span` the OTLP message of `s`, reusing its allocations: what
/// [`encode_span`] writes is what prost writes for it (the tests' reference).
#[cfg(test)]
fn fill(span: &mut Span, s: &SpanData, addrs: &mut AddrCache) {
    let kind = match s.kind {
        SpanKind::Client => span::SpanKind::Client,
        SpanKind::Server => span::SpanKind::Server,
        SpanKind::Internal => span::SpanKind::Internal,
    };
    set_bytes(&mut span.trace_id, &s.trace_id);
    set_bytes(&mut span.span_id, &s.span_id);
    match s.parent_span_id {
        Some(p) => set_bytes(&mut span.parent_span_id, &p),
        None => span.parent_span_id.clear(),
    }
    span.trace_state.clear();
    span.trace_state.push_str(&s.trace_state);
    span.name.clear();
    span.name.push_str(s.call.service());
    span.name.push('/');
    span.name.push_str(s.call.method());
    span.kind = kind as i32;
    span.start_time_unix_nano = s.start_unix_nanos;
    span.end_time_unix_nano = s.end_unix_nanos.max(s.start_unix_nanos);
    let status = span.status.get_or_insert_with(Status::default);
    status.message.clear();
    if s.error {
        status.message.push_str(s.status);
        status.code = status::StatusCode::Error as i32;
    } else {
        status.code = status::StatusCode::Ok as i32;
    }
    let mut a = Attrs {
        kvs: &mut span.attributes,
        n: 0,
    };
    a.str("rpc.system", "dubbo");
    a.str("rpc.service", s.call.service());
    a.str("rpc.method", s.call.method());
    if !s.call.version().is_empty() {
        a.str("dubbo.version", s.call.version());
    }
    if !s.call.group().is_empty() {
        a.str("dubbo.group", s.call.group());
    }
    if let Some(addr) = s.server {
        a.addr("server.address", addr, addrs);
    }
    if let Some(addr) = s.client {
        a.addr("client.address", addr, addrs);
    }
    if !s.front.is_empty() {
        a.str("mesh.front", s.front);
    }
    a.str("mesh.status", s.status);
    if let Some(r) = s.retries {
        a.int("mesh.retries", i64::from(r));
    }
    if let Some(n) = s.attempt {
        a.int("mesh.attempt", i64::from(n));
    }
    a.finish();
}

// ---------------------------------------------------------------------------------------
// A span's protobuf, written field by field
// ---------------------------------------------------------------------------------------

/// Protobuf wire types.
const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;

/// A field's key byte (every field written here has a tag below 16).
const fn key(tag: u8, wire_type: u8) -> u8 {
    (tag << 3) | wire_type
}

/// The length of the first `max` spans of `bytes` (`ScopeSpans.spans` fields one after
/// the other, as [`encode_span`] writes them), and how many that is (fewer if `bytes`
/// ends first).
fn split_spans(bytes: &[u8], max: usize) -> (usize, usize) {
    let (mut at, mut n) = (0, 0);
    while n < max {
        let Some(rest) = bytes.get(at + 1..) else {
            break;
        };
        // The key byte, then the length as a varint, then the span.
        let mut len = 0u64;
        let mut used = 0;
        for (i, &b) in rest.iter().enumerate().take(10) {
            len |= u64::from(b & 0x7f) << (7 * i);
            used = i + 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        let end = at + 1 + used + len as usize;
        if used == 0 || end > bytes.len() {
            break;
        }
        at = end;
        n += 1;
    }
    (at, n)
}

fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field: key, length, bytes.
fn put_bytes(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(key(tag, LEN));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `Span.attributes` (9): a `KeyValue` whose value is an `AnyValue` string.
fn put_str_attr(out: &mut Vec<u8>, k: &str, v: &str) {
    let any = 1 + varint_len(v.len() as u64) + v.len(); // AnyValue.string_value = 1
    let kv = 1 + varint_len(k.len() as u64) + k.len() + 1 + varint_len(any as u64) + any;
    out.push(key(9, LEN));
    put_varint(out, kv as u64);
    put_bytes(out, 1, k.as_bytes()); // KeyValue.key = 1
    out.push(key(2, LEN)); // KeyValue.value = 2
    put_varint(out, any as u64);
    put_bytes(out, 1, v.as_bytes());
}

/// The parts of spans that repeat from span to span, encoded once: a method's name
/// and its attributes, an address's attribute.
#[derive(Debug, Default)]
struct SpanCache {
    addrs: AddrCache,
    /// By the names' shared text ([`CallNames`] clones): its `name` field, and its
    /// attributes `rpc.system` to `dubbo.group`. The entry holds the text, so that a
    /// pointer compared is never one of other names.
    names: Vec<NamesBytes>,
    /// `server.address` (true) or `client.address` (false) attributes.
    addr_attrs: Vec<(SocketAddr, bool, Vec<u8>)>,
    /// A span's last fields (`mesh.front`, `mesh.status`, `mesh.retries`,
    /// `mesh.attempt`, `status`), by what they say: spans mostly end alike. The strings
    /// are `'static`: their address says which they are.
    tails: Vec<(TailKey, Vec<u8>)>,
}

/// Some names' text (held, so that its address is never another's), their places in
/// it, their `name` field and their attributes.
type NamesBytes = (Option<Arc<str>>, [usize; 3], Vec<u8>, Vec<u8>);

/// What a span's last fields say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TailKey {
    front: (usize, usize),
    status: (usize, usize),
    retries: Option<u32>,
    attempt: Option<u32>,
    error: bool,
}

impl TailKey {
    fn of(s: &SpanData) -> TailKey {
        TailKey {
            front: (s.front.as_ptr() as usize, s.front.len()),
            status: (s.status.as_ptr() as usize, s.status.len()),
            retries: s.retries,
            attempt: s.attempt,
            error: s.error,
        }
    }
}

impl SpanCache {
    const NAMES: usize = 64;
    const ADDRS: usize = 64;
    const TAILS: usize = 64;

    /// Where the `name` field and the name attributes of `call` are.
    fn names_index(&mut self, call: &CallNames) -> usize {
        let same = |(t, at, _, _): &NamesBytes| {
            *at == call.at
                && match (t, &call.text) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                }
        };
        // From the newest: the peers and methods of the moment are the last added.
        if let Some(i) = self.names.iter().rposition(same) {
            return i;
        }
        let (service, method) = (call.service(), call.method());
        let mut name = Vec::new();
        name.push(key(5, LEN));
        put_varint(&mut name, (service.len() + 1 + method.len()) as u64);
        name.extend_from_slice(service.as_bytes());
        name.push(b'/');
        name.extend_from_slice(method.as_bytes());
        let mut attrs = Vec::new();
        put_str_attr(&mut attrs, "rpc.system", "dubbo");
        put_str_attr(&mut attrs, "rpc.service", service);
        put_str_attr(&mut attrs, "rpc.method", method);
        // No value, no attribute (OpenTelemetry's rule): most services have neither.
        for (k, v) in [
            ("dubbo.version", call.version()),
            ("dubbo.group", call.group()),
        ] {
            if !v.is_empty() {
                put_str_attr(&mut attrs, k, v);
            }
        }
        if self.names.len() >= Self::NAMES {
            self.names.remove(0);
        }
        self.names.push((call.text.clone(), call.at, name, attrs));
        self.names.len() - 1
    }

    fn names_bytes(&self, i: usize) -> (&[u8], &[u8]) {
        self.names
            .get(i)
            .map_or((&[][..], &[][..]), |(_, _, n, a)| {
                (n.as_slice(), a.as_slice())
            })
    }

    /// Where the `server.address` (`server`) or `client.address` attribute of `addr`
    /// is.
    fn addr_index(&mut self, addr: SocketAddr, server: bool) -> usize {
        if let Some(i) = (self.addr_attrs.iter()).rposition(|(a, s, _)| *s == server && *a == addr)
        {
            return i;
        }
        let mut attr = Vec::new();
        let k = if server {
            "server.address"
        } else {
            "client.address"
        };
        put_str_attr(&mut attr, k, self.addrs.text(addr));
        if self.addr_attrs.len() >= Self::ADDRS {
            self.addr_attrs.remove(0);
        }
        self.addr_attrs.push((addr, server, attr));
        self.addr_attrs.len() - 1
    }

    fn addr_bytes(&self, i: usize) -> &[u8] {
        self.addr_attrs
            .get(i)
            .map_or(&[][..], |(_, _, a)| a.as_slice())
    }

    /// Where the last fields of `s` are.
    fn tail_index(&mut self, s: &SpanData) -> usize {
        let k = TailKey::of(s);
        if let Some(i) = self.tails.iter().rposition(|(t, _)| *t == k) {
            return i;
        }
        let mut out = Vec::new();
        if !s.front.is_empty() {
            put_str_attr(&mut out, "mesh.front", s.front);
        }
        put_str_attr(&mut out, "mesh.status", s.status);
        let mut ints = Stack::<64>::new();
        if let Some(r) = s.retries {
            ints.int_attr(b"mesh.retries", i64::from(r));
        }
        if let Some(n) = s.attempt {
            ints.int_attr(b"mesh.attempt", i64::from(n));
        }
        out.extend_from_slice(ints.as_slice());
        // status = 15: message = 2 (errors only), code = 3 (OK 1, ERROR 2)
        out.push(key(15, LEN));
        if s.error {
            let msg = match s.status.len() {
                0 => 0,
                n => 1 + varint_len(n as u64) + n,
            };
            put_varint(&mut out, (msg + 2) as u64);
            if msg > 0 {
                put_bytes(&mut out, 2, s.status.as_bytes());
            }
            out.extend_from_slice(&[key(3, VARINT), 2]);
        } else {
            out.extend_from_slice(&[2, key(3, VARINT), 1]);
        }
        if self.tails.len() >= Self::TAILS {
            self.tails.remove(0);
        }
        self.tails.push((k, out));
        self.tails.len() - 1
    }

    fn tail_bytes(&self, i: usize) -> &[u8] {
        self.tails.get(i).map_or(&[][..], |(_, t)| t.as_slice())
    }
}

/// A few fields written on the stack, then copied at once (what does not fit in its
/// `N` bytes is not written: the callers write less).
struct Stack<const N: usize> {
    buf: [u8; N],
    n: usize,
}

impl<const N: usize> Stack<N> {
    fn new() -> Stack<N> {
        Stack { buf: [0; N], n: 0 }
    }

    fn put<const L: usize>(&mut self, bytes: &[u8; L]) {
        if let Some(d) = self.buf.get_mut(self.n..self.n + L) {
            d.copy_from_slice(bytes);
            self.n += L;
        }
    }

    fn byte(&mut self, b: u8) {
        if let Some(d) = self.buf.get_mut(self.n) {
            *d = b;
            self.n += 1;
        }
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.byte((v as u8) | 0x80);
            v >>= 7;
        }
        self.byte(v as u8);
    }

    fn int_attr(&mut self, k: &[u8], v: i64) {
        let any = 1 + varint_len(v as u64);
        let kv = 2 + k.len() + 2 + any;
        self.put(&[key(9, LEN), kv as u8, key(1, LEN), k.len() as u8]);
        self.bytes(k);
        self.put(&[key(2, LEN), any as u8, key(3, VARINT)]);
        self.varint(v as u64);
    }

    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.byte(x);
        }
    }

    fn as_slice(&self) -> &[u8] {
        self.buf.get(..self.n).unwrap_or_default()
    }
}

/// Appends `s` as `ScopeSpans.spans` (2): the bytes prost writes for the `Span` message
/// [`fill`] makes of it (fields in tag order, defaults left out), without making it:
/// what repeats from span to span comes from `cache`, the rest is written on the stack,
/// and the pieces are copied once their length is known.
fn encode_span(out: &mut Vec<u8>, s: &SpanData, cache: &mut SpanCache) {
    let names = cache.names_index(&s.call);
    let server = s.server.map(|a| cache.addr_index(a, true));
    let client = s.client.map(|a| cache.addr_index(a, false));
    let mut head = Stack::<48>::new();
    head.put(&[key(1, LEN), 16]);
    head.put(&s.trace_id);
    head.put(&[key(2, LEN), 8]);
    head.put(&s.span_id);
    let trace_state = s.trace_state.len();
    let trace_state_len = match trace_state {
        0 => 0,
        n => 1 + varint_len(n as u64) + n,
    };
    // parent_span_id = 4: with the ids when no trace_state comes between.
    let mut parent = Stack::<16>::new();
    if let Some(p) = &s.parent_span_id {
        if trace_state == 0 {
            head.put(&[key(4, LEN), 8]);
            head.put(p);
        } else {
            parent.put(&[key(4, LEN), 8]);
            parent.put(p);
        }
    }
    // kind = 6 (SPAN_KIND_INTERNAL 1, SERVER 2, CLIENT 3), start = 7, end = 8
    let mut fixed = Stack::<24>::new();
    fixed.put(&[
        key(6, VARINT),
        match s.kind {
            SpanKind::Internal => 1,
            SpanKind::Server => 2,
            SpanKind::Client => 3,
        },
    ]);
    let start = s.start_unix_nanos;
    let end = s.end_unix_nanos.max(start);
    if start != 0 {
        fixed.byte(key(7, I64));
        fixed.put(&start.to_le_bytes());
    }
    if end != 0 {
        fixed.byte(key(8, I64));
        fixed.put(&end.to_le_bytes());
    }
    let tail = cache.tail_index(s);
    let (name, name_attrs) = cache.names_bytes(names);
    let server = server.map_or(&[][..], |i| cache.addr_bytes(i));
    let client = client.map_or(&[][..], |i| cache.addr_bytes(i));
    let tail = cache.tail_bytes(tail);
    let len = head.n
        + trace_state_len
        + parent.n
        + name.len()
        + fixed.n
        + name_attrs.len()
        + server.len()
        + client.len()
        + tail.len();
    out.reserve(len + 4);
    out.push(key(2, LEN));
    put_varint(out, len as u64);
    out.extend_from_slice(head.as_slice());
    if trace_state > 0 {
        put_bytes(out, 3, s.trace_state.as_bytes());
    }
    out.extend_from_slice(parent.as_slice());
    out.extend_from_slice(name);
    out.extend_from_slice(fixed.as_slice());
    out.extend_from_slice(name_attrs);
    out.extend_from_slice(server);
    out.extend_from_slice(client);
    out.extend_from_slice(tail);
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
    use prost::Message;

    use super::*;

    #[test]
    fn endpoints_parse() {
        let e = Endpoint::parse("http://127.0.0.1:4318").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("127.0.0.1", 4318, "/v1/traces")
        );
        let e = Endpoint::parse("http://collector/otlp/v1/traces").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("collector", 4318, "/otlp/v1/traces")
        );
        let e = Endpoint::parse("http://[::1]:9/").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("::1", 9, "/v1/traces")
        );
        assert_eq!(e.to_string(), "http://[::1]:9/v1/traces");
        for bad in [
            "https://h:1",
            "h:1",
            "http://",
            "http://h:0",
            "http://h:x",
            "http://h:1/a b",
            "http://u@h",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 500 x"), Some(500));
        assert_eq!(parse_status(b"HTTP/1.1 20"), None);
        assert_eq!(parse_status(b"garbage"), None);
        // Whether the connection can carry the next request, after how many bytes.
        let len = |h: &str| answer_body_len(h.as_bytes());
        assert_eq!(len("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"), Some(2));
        assert_eq!(
            len("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: Close\r\n\r\n"),
            None
        );
        assert_eq!(
            len("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            None
        );
        assert_eq!(len("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"), None);
        assert_eq!(len("HTTP/1.1 200 OK\r\n\r\n"), None);
    }

    fn span(kind: SpanKind) -> SpanData {
        SpanData::new(
            [1; 16],
            [2; 8],
            kind,
            CallNames::new("a.Svc", "m", "1.0", "g"),
        )
    }

    #[test]
    fn call_names_keep_their_parts() {
        let n = CallNames::new("a.Svc", "m", "", "blue");
        assert_eq!(
            (n.service(), n.method(), n.version(), n.group()),
            ("a.Svc", "m", "", "blue")
        );
        let n = CallNames::default();
        assert_eq!(
            (n.service(), n.method(), n.version(), n.group()),
            ("", "", "", "")
        );
        let n = CallNames::new("a.Svc", "m", "1", "g");
        assert!(n.is("a.Svc", "m", "1", "g"));
        for other in [
            ("a.Sv", "cm", "1", "g"),
            ("a.Svc", "m", "", "1g"),
            ("a.Svc", "n", "1", "g"),
        ] {
            assert!(!n.is(other.0, other.1, other.2, other.3));
        }
        assert!(CallNames::default().is("", "", "", ""));
    }

    #[test]
    fn the_names_of_a_method_are_made_once() {
        let mut cache = NamesCache::default();
        let a = cache.get("a.Svc", "m", "1", "");
        let b = cache.get("a.Svc", "m", "1", "");
        assert!(Arc::ptr_eq(
            a.text.as_ref().unwrap(),
            b.text.as_ref().unwrap()
        ));
        for i in 0..100 {
            let n = cache.get("a.Svc", &format!("m{i}"), "1", "");
            assert_eq!(n.method(), format!("m{i}"));
        }
        assert_eq!(cache.recent.len(), NamesCache::SIZE);
        assert_eq!(cache.get("a.Svc", "m", "1", ""), a);
    }

    #[test]
    fn spans_become_otlp_messages_reusing_the_last_ones() {
        let mut s = span(SpanKind::Server);
        s.parent_span_id = Some([3; 8]);
        s.server = Some("127.0.0.1:20880".parse().unwrap());
        s.retries = Some(1);
        s.error = true;
        s.status = "timeout";
        let mut p = Span::default();
        let mut addrs = AddrCache::default();
        fill(&mut p, &s, &mut addrs);
        assert_eq!(p.parent_span_id, vec![3; 8]);
        assert_eq!(p.name, "a.Svc/m");
        assert_eq!(p.kind, span::SpanKind::Server as i32);
        let status = p.status.clone().unwrap();
        assert_eq!(
            (status.code, status.message.as_str()),
            (status::StatusCode::Error as i32, "timeout")
        );
        let keys: Vec<&str> = p.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "rpc.system",
                "rpc.service",
                "rpc.method",
                "dubbo.version",
                "dubbo.group",
                "server.address",
                "mesh.status",
                "mesh.retries"
            ]
        );
        let mut buf = Vec::new();
        p.encode(&mut buf).unwrap();
        assert_eq!(Span::decode(&buf[..]).unwrap(), p);
        // The same message made again from another span is that span's alone.
        let other = span(SpanKind::Client);
        fill(&mut p, &other, &mut addrs);
        let mut fresh = Span::default();
        fill(&mut fresh, &other, &mut addrs);
        assert_eq!(p, fresh);
    }

    #[test]
    fn a_batch_is_what_prost_writes_for_the_whole_request() {
        let mut batch = vec![span(SpanKind::Client), span(SpanKind::Server)];
        batch[1].server = Some("10.0.0.1:30000".parse().unwrap());
        batch[1].client = Some("10.0.0.2:40000".parse().unwrap());
        let endpoint = Endpoint::parse("http://127.0.0.1:1").unwrap();
        let mut w = Worker::new(Config::new(endpoint, "consumer-agent"), Arc::default());
        for _ in 0..2 {
            let mut b = batch.clone();
            w.encode(&mut b);
            assert!(b.is_empty());
            let mut addrs = AddrCache::default();
            let spans = batch
                .iter()
                .map(|d| {
                    let mut s = Span::default();
                    fill(&mut s, d, &mut addrs);
                    s
                })
                .collect();
            let whole = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(w.resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(w.scope.clone()),
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            assert_eq!(w.body, whole.encode_to_vec());
            let back = ExportTraceServiceRequest::decode(&w.body[..]).unwrap();
            assert_eq!(back, whole);
        }
    }

    #[test]
    fn each_span_is_written_as_prost_writes_its_message() {
        let mut variants = Vec::new();
        for kind in [SpanKind::Client, SpanKind::Server, SpanKind::Internal] {
            variants.push(span(kind));
        }
        let mut s = span(SpanKind::Server);
        s.parent_span_id = Some([3; 8]);
        s.trace_state = "k=v,x=y".into();
        s.server = Some("[::1]:20880".parse().unwrap());
        s.client = Some("10.0.0.2:40000".parse().unwrap());
        s.front = "dubbo";
        s.retries = Some(300);
        s.attempt = Some(2);
        s.error = true;
        s.status = "timeout";
        variants.push(s.clone());
        s.status = "";
        variants.push(s.clone());
        s.error = false;
        s.start_unix_nanos = 0;
        s.end_unix_nanos = 0;
        variants.push(s.clone());
        // A long status and front (written the long way).
        let mut long = s.clone();
        long.status = "a status of more than fifty bytes, which no call has, really";
        long.front = "a front-end of more than fifty bytes, which no agent has either";
        long.error = true;
        variants.push(long);
        // Long names: a span of more than 127 bytes, and of more than 16383.
        for n in [1, 100, 200, 20_000] {
            let long = "s".repeat(n);
            s.call = CallNames::new(&long, "m", &long, "g");
            variants.push(s.clone());
        }
        // No version, no group, or neither: their attributes are left out.
        for (version, group) in [("", "g"), ("1.0", ""), ("", "")] {
            s.call = CallNames::new("a.Svc", "m", version, group);
            variants.push(s.clone());
        }
        let mut addrs = AddrCache::default();
        let mut cache = SpanCache::default();
        for v in variants.iter().chain(&variants) {
            let mut ours = Vec::new();
            encode_span(&mut ours, v, &mut cache);
            let mut message = Span::default();
            fill(&mut message, v, &mut addrs);
            let mut theirs = Vec::new();
            prost::encoding::message::encode(2, &message, &mut theirs);
            assert_eq!(ours, theirs, "{v:?}");
            let keys: Vec<&str> = message.attributes.iter().map(|a| &*a.key).collect();
            assert_eq!(
                keys.contains(&"dubbo.version"),
                !v.call.version().is_empty()
            );
            assert_eq!(keys.contains(&"dubbo.group"), !v.call.group().is_empty());
        }
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v));
            assert_eq!(out.len(), prost::encoding::encoded_len_varint(v));
        }
    }

    #[test]
    fn addresses_are_formatted_once() {
        let mut c = AddrCache::default();
        for port in 1..200u16 {
            let a = SocketAddr::from(([127, 0, 0, 1], port));
            assert_eq!(c.text(a), a.to_string());
            assert_eq!(c.text(a), a.to_string());
        }
        assert_eq!(c.entries.len(), AddrCache::SIZE);
    }

    /// A collector answering every POST 200 (after reading its body), counting them.
    /// Bodies a test collector received.
    type Bodies = Arc<Mutex<Vec<Vec<u8>>>>;

    /// A collector answering every POST 200: how many came, and their bodies.
    fn collector() -> (Endpoint, Arc<AtomicU64>, Bodies) {
        let c = collector_with(Connections::Keep);
        (c.endpoint, c.posts, c.bodies)
    }

    /// How a test collector treats a connection after each answer.
    #[derive(Clone, Copy, PartialEq)]
    enum Connections {
        /// Keeps it for the next request, as real collectors do.
        Keep,
        /// Closes it without saying so in the answer.
        CloseSilently,
        /// Says `Connection: close`, then closes it.
        Close,
    }

    struct Collector {
        endpoint: Endpoint,
        posts: Arc<AtomicU64>,
        bodies: Bodies,
        /// Connections accepted.
        conns: Arc<AtomicU64>,
    }

    /// A collector answering every POST 200 with an empty body, keeping the bodies.
    fn collector_with(how: Connections) -> Collector {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (posts, conns): (Arc<AtomicU64>, Arc<AtomicU64>) = Default::default();
        let bodies = Bodies::default();
        let (counted, kept, accepted) =
            (Arc::clone(&posts), Arc::clone(&bodies), Arc::clone(&conns));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                accepted.fetch_add(1, Relaxed);
                let (counted, kept) = (Arc::clone(&counted), Arc::clone(&kept));
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let text = String::from_utf8_lossy(&got).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len: usize = text
                                .lines()
                                .find_map(|l| l.strip_prefix("Content-Length: "))
                                .and_then(|l| l.trim().parse().ok())
                                .unwrap_or(0);
                            if got.len() >= end + 4 + len {
                                kept.lock()
                                    .unwrap()
                                    .push(got[end + 4..end + 4 + len].to_vec());
                                got.drain(..end + 4 + len);
                                counted.fetch_add(1, Relaxed);
                                let answer: &[u8] = match how {
                                    Connections::Close => b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                                    _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
                                };
                                if stream.write_all(answer).is_err() || how != Connections::Keep {
                                    return;
                                }
                                continue;
                            }
                        }
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                });
            }
        });
        let url = format!("http://127.0.0.1:{port}/v1/traces");
        Collector {
            endpoint: Endpoint::parse(&url).unwrap(),
            posts,
            bodies,
            conns,
        }
    }

    #[test]
    fn one_connection_carries_the_posts_while_the_collector_keeps_it() {
        for (how, conns) in [
            (Connections::Keep, 1),
            (Connections::CloseSilently, 5),
            (Connections::Close, 5),
        ] {
            let c = collector_with(how);
            let config = Config {
                batch: 10,
                ..Config::new(c.endpoint.clone(), "t")
            };
            let mut w = Worker::new(config, Arc::default());
            let mut sent = Vec::new();
            for _ in 0..5 {
                let mut batch = vec![span(SpanKind::Client); 10];
                w.encode(&mut batch);
                w.parts.clear();
                let status = w.post(0, Duration::from_secs(5)).unwrap();
                assert_eq!(status, 200);
                sent.push(w.body.clone());
            }
            assert_eq!(c.posts.load(Relaxed), 5);
            assert_eq!(c.conns.load(Relaxed), conns, "{}", how as u8);
            assert_eq!(*c.bodies.lock().unwrap(), sent, "every request whole");
        }
    }

    #[test]
    fn batches_are_made_across_the_loops_queues() {
        let (endpoint, posts, bodies) = collector();
        let (spans, control) = queued(1000);
        let other = spans.clone();
        let config = Config {
            batch: 100,
            ..Config::new(endpoint, "t")
        };
        let mut w = Worker::new(config, Arc::default());
        // 150 spans on each of two handles, each span its own id.
        for i in 0..300u64 {
            let mut s = span(SpanKind::Client);
            s.span_id = (i + 1).to_be_bytes();
            if i % 2 == 0 { &spans } else { &other }.send(&s);
        }
        assert!(w.take(&control));
        assert_eq!((w.chunks.len(), w.pending), (2, 300));
        w.export(None, false);
        assert_eq!(w.stats.exported(), 300);
        assert_eq!(posts.load(Relaxed), 3);
        let mut ids = Vec::new();
        for body in bodies.lock().unwrap().iter() {
            let request = ExportTraceServiceRequest::decode(&body[..]).unwrap();
            let batch = &request.resource_spans[0].scope_spans[0].spans;
            assert_eq!(batch.len(), 100);
            ids.extend(batch.iter().map(|s| s.span_id.clone()));
        }
        ids.sort();
        let expected: Vec<Vec<u8>> = (1..=300u64).map(|i| i.to_be_bytes().to_vec()).collect();
        assert_eq!(ids, expected, "each span once");
        // Sent: the chunks are kept for the queues, nothing is left.
        assert_eq!((w.chunks.len(), w.pending, w.spare.len()), (0, 0, 2));
    }

    #[test]
    fn close_sends_what_is_queued_and_joins_the_thread() {
        let (endpoint, posts, _) = collector();
        let config = Config {
            interval: Duration::from_secs(60),
            batch: 100,
            ..Config::new(endpoint, "t")
        };
        let (spans, _exporter) = start(config).unwrap();
        for _ in 0..250 {
            spans.send(&span(SpanKind::Client));
        }
        let kept = spans.clone();
        assert!(spans.close(Duration::from_secs(5)));
        assert_eq!(spans.stats().exported(), 250);
        assert_eq!(posts.load(Relaxed), 3);
        // Closed: what comes later is dropped and counted, and closing again is done.
        kept.send(&span(SpanKind::Client));
        assert_eq!(kept.stats().dropped(), 1);
        assert!(kept.close(Duration::ZERO));
    }

    #[test]
    fn close_gives_up_on_a_collector_that_does_not_answer() {
        // A listener that accepts (the backlog) and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let config = Config {
            interval: Duration::from_secs(60),
            ..Config::new(Endpoint::parse(&url).unwrap(), "t")
        };
        let (spans, _exporter) = start(config).unwrap();
        spans.send(&span(SpanKind::Client));
        let started = Instant::now();
        spans.close(Duration::from_millis(300));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(spans.stats().dropped(), 1);
        drop(listener);
    }

    /// A handle whose spans queue for a worker the test runs itself.
    fn queued(capacity: usize) -> (Spans, Arc<Control>) {
        let control = Arc::new(Control::new(capacity));
        let spans = Spans {
            sink: Sink::Queue(control.new_queue()),
            stats: Arc::default(),
            control: control.clone(),
        };
        control.handles.fetch_add(1, Relaxed);
        (spans, control)
    }

    #[test]
    fn each_handle_queues_its_spans_encoded_up_to_its_capacity() {
        let (spans, control) = queued(2);
        let other = spans.clone();
        let (client, server) = (span(SpanKind::Client), span(SpanKind::Server));
        for _ in 0..3 {
            spans.send(&client);
            other.send(&server);
        }
        assert_eq!(spans.stats().dropped(), 2, "one past each handle's two");
        let mut w = Worker::new(
            Config::new(Endpoint::parse("http://127.0.0.1:9").unwrap(), "t"),
            Arc::default(),
        );
        assert!(w.take(&control));
        assert_eq!(w.pending, 4);
        // The bytes are the spans as the worker itself encodes them.
        let mut expected = Vec::new();
        let mut cache = SpanCache::default();
        for s in [&client, &client, &server, &server] {
            encode_span(&mut expected, s, &mut cache);
        }
        let taken: Vec<u8> = (w.chunks.iter()).flat_map(|(b, _)| b.clone()).collect();
        assert_eq!(taken, expected);
        // Taken: the queues have room again, and nothing more to take.
        assert!(!w.take(&control));
        spans.send(&client);
        assert_eq!(spans.stats().dropped(), 2);
        // A dropped handle's queue goes once emptied: its spans are sent.
        other.send(&server);
        drop(other);
        assert_eq!(control.handles.load(Relaxed), 1);
        assert!(w.take(&control));
        assert_eq!(w.pending, 6);
        assert_eq!(control.queues.lock().unwrap().len(), 2);
        w.take(&control);
        assert_eq!(control.queues.lock().unwrap().len(), 1);
    }

    #[test]
    fn batches_split_at_whole_spans() {
        let mut bytes = Vec::new();
        let mut cache = SpanCache::default();
        let mut ends = Vec::new();
        for kind in [SpanKind::Client, SpanKind::Server, SpanKind::Internal] {
            encode_span(&mut bytes, &span(kind), &mut cache);
            ends.push(bytes.len());
        }
        assert_eq!(split_spans(&bytes, 2), (ends[1], 2));
        assert_eq!(split_spans(&bytes, 5), (ends[2], 3));
        assert_eq!(split_spans(&bytes, 0), (0, 0));
        // A cut span is not counted.
        assert_eq!(split_spans(&bytes[..ends[2] - 1], 5), (ends[1], 2));
        assert_eq!(split_spans(&[], 5), (0, 0));
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let config = Config {
            queue: 1,
            interval: Duration::from_secs(60),
            batch: 1000,
            ..Config::new(Endpoint::parse("http://127.0.0.1:9").unwrap(), "t")
        };
        let (spans, exporter) = start(config).unwrap();
        for _ in 0..100 {
            spans.send(&span(SpanKind::Client));
        }
        assert!(spans.stats().dropped() >= 98, "{}", spans.stats().dropped());
        let stats = spans.stats().clone();
        drop(spans);
        exporter.join();
        // The rest was tried once the handles were gone: port 9 refuses.
        assert_eq!(stats.dropped(), 100);
        assert_eq!(stats.exported(), 0);
    }
}
