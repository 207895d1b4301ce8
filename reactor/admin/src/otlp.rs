//! Span export for dubbo-mesh's agents, OTLP over HTTP with protobuf bodies.
//!
//! The loops hand finished spans ([`SpanData`]) to a [`Spans`] handle: a `try_send` on a
//! bounded channel, so a call never waits. One exporter thread batches them (up to
//! [`Config::batch`] spans or [`Config::interval`], whichever comes first) into an
//! `ExportTraceServiceRequest` (the `opentelemetry-proto` messages, prost-encoded) and
//! POSTs it to the collector with `Content-Type: application/x-protobuf` over a plain
//! HTTP/1.1 connection with connect, write and read timeouts.
//!
//! A span is dropped, and counted ([`Stats::dropped`]), when the queue is full (the
//! collector is slow or down and the exporter thread is waiting on it) or when its batch
//! could not be delivered (connection refused, timeout, a status other than 2xx). Nothing
//! is retried: tracing is best effort, calls come first.
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
//! spans.send(span);
//! ```

#![deny(missing_docs)]

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status, Span, Status};

/// The path POSTed to when the endpoint names none (OTLP/HTTP's default).
pub const DEFAULT_PATH: &str = "/v1/traces";
/// The port when the endpoint names none (OTLP/HTTP's default).
pub const DEFAULT_PORT: u16 = 4318;

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

/// A call's service, method, version and group, in one allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallNames {
    text: String,
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
        CallNames { text, at }
    }

    fn part(&self, i: usize) -> &str {
        let start = if i == 0 {
            0
        } else {
            self.at.get(i - 1).copied().unwrap_or(0)
        };
        let end = self.at.get(i).copied().unwrap_or(self.text.len());
        self.text.get(start..end).unwrap_or_default()
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

/// One finished span of a Dubbo call, as the loops hand it over: its name is
/// `service/method`, its attributes `rpc.system` (`dubbo`), `rpc.service`,
/// `rpc.method`, `dubbo.version`, `dubbo.group`, `server.address`, `client.address`,
/// `mesh.front`, `mesh.status`, `mesh.retries` and `mesh.attempt` (those known). Kept
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
        SpanData {
            trace_id,
            span_id,
            parent_span_id: None,
            kind,
            start_unix_nanos: unix_nanos(),
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
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
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

/// The loops' handle: hands finished spans to the exporter thread without waiting.
#[derive(Debug, Clone)]
pub struct Spans {
    tx: Sender<SpanData>,
    stats: Arc<Stats>,
}

impl Spans {
    /// A handle on a bounded queue of `capacity` spans that the caller reads itself
    /// instead of an exporter thread (tests, or another sink).
    pub fn bounded(capacity: usize) -> (Spans, Receiver<SpanData>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let stats = Arc::new(Stats::default());
        (Spans { tx, stats }, rx)
    }

    /// Queues a finished span; if the queue is full it is dropped and counted.
    pub fn send(&self, span: SpanData) {
        match self.tx.try_send(span) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// The exporter's counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}

/// The exporter thread. It exits once every [`Spans`] handle is dropped, after sending
/// what is queued.
#[derive(Debug)]
pub struct Exporter {
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Waits for the thread to finish (every [`Spans`] must be dropped first).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
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
/// every [`Spans`] is dropped.
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
    let (tx, rx) = crossbeam_channel::bounded(config.queue.max(1));
    let stats = Arc::new(Stats::default());
    let worker = Worker::new(config, stats.clone());
    let thread = std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || worker.run(&rx))?;
    Ok((
        Spans { tx, stats },
        Exporter {
            thread: Some(thread),
        },
    ))
}

struct Worker {
    config: Config,
    stats: Arc<Stats>,
    body: Vec<u8>,
    head: Vec<u8>,
    /// The resource (`service.name`) and scope of every request.
    resource: Resource,
    scope: InstrumentationScope,
    /// The one span message, made again for each span (its strings reused), so that a
    /// warm exporter allocates nothing per span.
    span: Span,
    /// The encoded spans of the batch, before the request's framing.
    spans: Vec<u8>,
    /// Addresses as text.
    addrs: AddrCache,
}

impl Worker {
    fn run(mut self, rx: &Receiver<SpanData>) {
        let mut batch: Vec<SpanData> = Vec::with_capacity(self.config.batch.max(1));
        loop {
            // Wait for a first span, then gather until full or the interval is over.
            let first = match rx.recv() {
                Ok(s) => s,
                Err(_) => return,
            };
            batch.push(first);
            let deadline = Instant::now() + self.config.interval;
            let mut closed = false;
            while batch.len() < self.config.batch.max(1) {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(s) => batch.push(s),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            self.export(&mut batch);
            if closed {
                return;
            }
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
        Worker {
            config,
            stats,
            body: Vec::new(),
            head: Vec::new(),
            resource,
            scope,
            span: Span::default(),
            spans: Vec::new(),
            addrs: AddrCache::default(),
        }
    }

    /// Encodes `batch` (emptied) into `self.body` as one `ExportTraceServiceRequest`
    /// with one `ResourceSpans` holding one `ScopeSpans`: each span is encoded once
    /// (prost's own encoding of the `opentelemetry-proto` message), and the request's
    /// framing around them written with prost's encoding functions, which is what
    /// encoding the whole request message would write (see the tests) without
    /// measuring every span again at each level of nesting.
    fn encode(&mut self, batch: &mut Vec<SpanData>) {
        use prost::encoding::{encode_key, encode_varint, message, WireType};
        self.spans.clear();
        for data in batch.drain(..) {
            fill(&mut self.span, &data, &mut self.addrs);
            message::encode(2, &self.span, &mut self.spans); // ScopeSpans.spans = 2
        }
        let framed = |tag: u32, len: usize, out: &mut Vec<u8>| {
            encode_key(tag, WireType::LengthDelimited, out);
            encode_varint(len as u64, out);
        };
        let mut scope = Vec::new();
        message::encode(1, &self.scope, &mut scope); // ScopeSpans.scope = 1
        let scope_spans_len = scope.len() + self.spans.len();
        let mut resource = Vec::new();
        message::encode(1, &self.resource, &mut resource); // ResourceSpans.resource = 1
        let mut scope_head = Vec::new();
        framed(2, scope_spans_len, &mut scope_head); // ResourceSpans.scope_spans = 2
        let resource_spans_len = resource.len() + scope_head.len() + scope_spans_len;
        self.body.clear();
        framed(1, resource_spans_len, &mut self.body); // request.resource_spans = 1
        self.body.extend_from_slice(&resource);
        self.body.extend_from_slice(&scope_head);
        self.body.extend_from_slice(&scope);
        self.body.extend_from_slice(&self.spans);
    }

    fn export(&mut self, batch: &mut Vec<SpanData>) {
        let n = batch.len() as u64;
        self.encode(batch);
        match self.post() {
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

    /// One POST: the answer's status code.
    fn post(&mut self) -> io::Result<u16> {
        let ep = &self.config.endpoint;
        let timeout = self.config.timeout;
        let started = Instant::now();
        let addrs: Vec<SocketAddr> = (ep.host.as_str(), ep.port).to_socket_addrs()?.collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address for the host");
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let mut stream = stream.ok_or(last)?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_read_timeout(Some(timeout))?;
        let _ = stream.set_nodelay(true);
        self.head.clear();
        write!(
            self.head,
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: dubbo-mesh\r\n\r\n",
            ep.path,
            ep.authority,
            self.body.len()
        )?;
        stream.write_all(&self.head)?;
        stream.write_all(&self.body)?;
        // The status line is all we need; the whole answer may take at most twice the
        // timeout (a collector trickling bytes does not hold the thread longer).
        let mut got = [0u8; 512];
        let mut len = 0;
        while len < got.len() {
            if started.elapsed() > 2 * timeout {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "answer too slow"));
            }
            let Some(room) = got.get_mut(len..) else {
                break;
            };
            match stream.read(room) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if got
                .get(..len)
                .is_some_and(|g| g.windows(2).any(|w| w == b"\r\n"))
            {
                break;
            }
        }
        parse_status(got.get(..len).unwrap_or_default())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP answer"))
    }
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
fn set_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.clear();
    out.extend_from_slice(bytes);
}

/// Writes the attributes of a span message, one after the other, reusing the key and
/// value strings a message already has from an earlier batch.
struct Attrs<'a> {
    kvs: &'a mut Vec<KeyValue>,
    n: usize,
}

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

/// Makes `span` the OTLP message of `s`, reusing its allocations.
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
    a.str("dubbo.version", s.call.version());
    a.str("dubbo.group", s.call.group());
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
    fn addresses_are_formatted_once() {
        let mut c = AddrCache::default();
        for port in 1..200u16 {
            let a = SocketAddr::from(([127, 0, 0, 1], port));
            assert_eq!(c.text(a), a.to_string());
            assert_eq!(c.text(a), a.to_string());
        }
        assert_eq!(c.entries.len(), AddrCache::SIZE);
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
            spans.send(span(SpanKind::Client));
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
