//! A mock Dubbo provider of `IHelloService.hash(String)`, on the reactor.
//!
//! Each call answers `(str + salt).hashCode()` after `latency`, in the request's own
//! serialization (hessian2 or fastjson). Like Dubbo's fixed thread pool, at most
//! `threads` calls are in flight; one more gets status 100 at once. A sleeping call costs
//! a timer, not a thread. An optional capacity model (`cores` virtual cores, `cpu_us` of
//! work per call, FIFO) makes providers of uneven capacity without burning real CPU.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use codec::dubbo::{self, status, Reply, Serialization};
use codec::hessian2::Value;
use codec::Decoded;
use reactor::{Builder, Config, Conn, ConnId, Ctx, Handler, Reactor};
use slab::Slab;

/// The service the mock provider exports.
pub const SERVICE: &str = "com.alibaba.dubbo.performance.demo.provider.IHelloService";
/// Its one method.
pub const METHOD: &str = "hash";

/// Settings of a mock provider.
#[derive(Debug, Clone)]
pub struct ProviderOpts {
    /// Address to listen on (port 0 picks one).
    pub listen: SocketAddr,
    /// Sleep of each call before it answers.
    pub latency: Duration,
    /// Calls in flight at most; one more gets SERVER_THREADPOOL_EXHAUSTED.
    pub threads: usize,
    /// Appended (in decimal) to the argument before hashing.
    pub salt: Option<i64>,
    /// Event loops.
    pub loops: usize,
    /// Virtual cores of the capacity model (0: no model).
    pub cores: usize,
    /// Virtual CPU time each call needs on one core, in microseconds.
    pub cpu_us: u64,
}

impl Default for ProviderOpts {
    fn default() -> Self {
        ProviderOpts {
            listen: SocketAddr::from(([127, 0, 0, 1], 20880)),
            latency: Duration::from_millis(50),
            threads: 200,
            salt: None,
            loops: 1,
            cores: 0,
            cpu_us: 0,
        }
    }
}

impl ProviderOpts {
    /// Calls per second this provider can answer at most: limited by its threads over
    /// the time each call holds one, and by its virtual cores.
    pub fn capacity(&self) -> f64 {
        let hold = self.latency.as_secs_f64().max(self.cpu_us as f64 / 1e6);
        let by_threads = if hold > 0.0 {
            self.threads as f64 / hold
        } else {
            f64::INFINITY
        };
        let by_cores = if self.cores > 0 && self.cpu_us > 0 {
            self.cores as f64 * 1e6 / self.cpu_us as f64
        } else {
            f64::INFINITY
        };
        by_threads.min(by_cores)
    }
}

/// Counters of a running provider.
#[derive(Debug, Default)]
pub struct ProviderStats {
    /// Calls answered with a value.
    pub answered: AtomicU64,
    /// Calls refused with status 100.
    pub exhausted: AtomicU64,
    /// Calls answered with another error status.
    pub errors: AtomicU64,
    /// Heartbeats answered.
    pub heartbeats: AtomicU64,
    /// Most calls in flight at once.
    pub peak_inflight: AtomicUsize,
}

/// State shared by the loops of one provider: the thread pool and the virtual cores.
#[derive(Debug)]
struct Shared {
    inflight: AtomicUsize,
    /// When each virtual core is free next (a min-heap).
    cores: Mutex<BinaryHeap<Reverse<Instant>>>,
    stats: Arc<ProviderStats>,
}

/// A running mock provider.
#[derive(Debug)]
pub struct RunningProvider {
    reactor: Option<Reactor<()>>,
    addr: SocketAddr,
    stats: Arc<ProviderStats>,
}

impl RunningProvider {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its counters.
    pub fn stats(&self) -> &ProviderStats {
        &self.stats
    }

    /// Stops its loops and waits for them.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Waits until the loops exit (they run until stopped).
    pub fn join(mut self) {
        if let Some(r) = self.reactor.take() {
            r.join();
        }
    }

    fn shutdown(&mut self) {
        if let Some(r) = self.reactor.take() {
            r.stop();
            r.join();
        }
    }
}

impl Drop for RunningProvider {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts a mock provider on its own loop threads.
///
/// # Errors
/// Binding the listener or starting a loop failed.
pub fn spawn(opts: ProviderOpts) -> io::Result<RunningProvider> {
    let stats = Arc::new(ProviderStats::default());
    let now = Instant::now();
    let shared = Arc::new(Shared {
        inflight: AtomicUsize::new(0),
        cores: Mutex::new((0..opts.cores).map(|_| Reverse(now)).collect()),
        stats: stats.clone(),
    });
    let config = Config {
        loops: opts.loops.max(1),
        thread_name: "provider".into(),
        ..Config::default()
    };
    let salt = opts.salt.map(|s| s.to_string()).unwrap_or_default();
    let reactor = Builder::new(config)
        .listen(opts.listen, ())
        .start(move |_, _| Provider {
            opts: opts.clone(),
            salt: salt.clone(),
            shared: shared.clone(),
            pending: Slab::new(),
        })?;
    let addr = reactor.local_addrs()[0];
    Ok(RunningProvider {
        reactor: Some(reactor),
        addr,
        stats,
    })
}

/// A call sleeping on its timer.
#[derive(Debug)]
struct Pending {
    conn: ConnId,
    id: i64,
    serialization: Serialization,
    value: i32,
    attachments: bool,
}

#[derive(Debug)]
struct Provider {
    opts: ProviderOpts,
    salt: String,
    shared: Arc<Shared>,
    pending: Slab<Pending>,
}

/// Java 2.7 answers with attachments to requests of version 2.0.2 up to 2.0.99.
fn wants_attachments(version: &str) -> bool {
    version
        .strip_prefix("2.0.")
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| (2..=99).contains(&p))
}

impl Provider {
    fn reply(cx: &mut Ctx<'_, Self>, p: &Pending) {
        if let Some(out) = cx.output(p.conn) {
            let atts: &[(&str, &str)] = if p.attachments {
                &[("dubbo", "2.0.2")]
            } else {
                &[]
            };
            let _ = dubbo::encode_response(
                out,
                p.id,
                p.serialization,
                status::OK,
                &Reply::Value(&Value::Int(p.value)),
                atts,
            );
        }
    }

    fn error(
        cx: &mut Ctx<'_, Self>,
        conn: ConnId,
        id: i64,
        ser: Serialization,
        st: u8,
        text: &str,
    ) {
        if let Some(out) = cx.output(conn) {
            let _ = dubbo::encode_response(out, id, ser, st, &Reply::Error(text), &[]);
        }
    }

    /// Handles one frame; `false` closes the connection.
    fn frame(&mut self, cx: &mut Ctx<'_, Self>, conn: ConnId, frame: &dubbo::Frame<'_>) -> bool {
        if !frame.is_request() {
            return true; // a heartbeat reply or stray response: nothing to do
        }
        if frame.is_event() {
            if frame.is_two_way() {
                if let Some(out) = cx.output(conn) {
                    dubbo::encode_heartbeat_reply(out, frame.id());
                }
                self.shared.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            return true;
        }
        let Some(ser) = frame.header.serialization() else {
            return false;
        };
        let body = match dubbo::decode_request_body(frame.serialization_id(), frame.body) {
            Ok(b) => b,
            Err(e) => {
                log::debug!("bad request body: {e}");
                self.shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                Self::error(
                    cx,
                    conn,
                    frame.id(),
                    ser,
                    status::BAD_REQUEST,
                    &e.to_string(),
                );
                return true;
            }
        };
        if !frame.is_two_way() {
            return true;
        }
        let arg = match (
            body.path.as_str(),
            body.method.as_str(),
            body.args.as_slice(),
        ) {
            (SERVICE, METHOD, [Value::String(s)]) => s,
            _ => {
                self.shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                let text = format!(
                    "Failed to invoke remote method: {}, provider: {}, cause: No such method {} in service {} with descriptor {:?}",
                    body.method, SERVICE, body.method, body.path, body.descriptor
                );
                Self::error(cx, conn, frame.id(), ser, status::SERVER_ERROR, &text);
                return true;
            }
        };
        // The fixed thread pool: take a thread or refuse at once.
        let taken = self
            .shared
            .inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.opts.threads).then_some(n + 1)
            });
        let Ok(before) = taken else {
            self.shared.stats.exhausted.fetch_add(1, Ordering::Relaxed);
            let text = format!(
                "Server side({},{}) threadpool is exhausted, detail msg: Thread pool is EXHAUSTED! Max: {}",
                self.opts.listen.ip(),
                self.opts.listen.port(),
                self.opts.threads
            );
            Self::error(
                cx,
                conn,
                frame.id(),
                ser,
                status::SERVER_THREADPOOL_EXHAUSTED,
                &text,
            );
            return true;
        };
        self.shared
            .stats
            .peak_inflight
            .fetch_max(before + 1, Ordering::Relaxed);
        let value = if self.salt.is_empty() {
            codec::java::string_hash_code(arg)
        } else {
            codec::java::string_hash_code(&format!("{arg}{}", self.salt))
        };
        let now = cx.now();
        let mut at = now + self.opts.latency;
        if self.opts.cores > 0 && self.opts.cpu_us > 0 {
            if let Ok(mut cores) = self.shared.cores.lock() {
                if let Some(Reverse(free)) = cores.pop() {
                    let done = free.max(now) + Duration::from_micros(self.opts.cpu_us);
                    cores.push(Reverse(done));
                    at = at.max(done);
                }
            }
        }
        let p = Pending {
            conn,
            id: frame.id(),
            serialization: ser,
            value,
            attachments: wants_attachments(&body.dubbo_version),
        };
        if at <= now {
            self.finish(cx, p);
        } else {
            let key = self.pending.insert(p);
            cx.set_timer(at - now, key);
        }
        true
    }

    fn finish(&mut self, cx: &mut Ctx<'_, Self>, p: Pending) {
        Self::reply(cx, &p);
        self.shared.inflight.fetch_sub(1, Ordering::AcqRel);
        self.shared.stats.answered.fetch_add(1, Ordering::Relaxed);
    }
}

impl Handler for Provider {
    type Tag = ();
    type Msg = ();
    /// A delayed answer's key in `pending`.
    type Timer = usize;

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
        let mut used = 0;
        loop {
            let rest = input.get(used..).unwrap_or_default();
            match dubbo::decode_frame(rest) {
                Ok(Decoded::Complete { msg, consumed }) => {
                    used += consumed;
                    if !self.frame(cx, conn.id, &msg) {
                        cx.abort(conn.id);
                        return input.len();
                    }
                }
                Ok(Decoded::Incomplete) => return used,
                Err(e) => {
                    log::debug!("malformed frame: {e}");
                    cx.abort(conn.id);
                    return input.len();
                }
            }
        }
    }

    fn timer(&mut self, cx: &mut Ctx<'_, Self>, _timer: reactor::TimerId, key: usize) {
        if let Some(p) = self.pending.try_remove(key) {
            self.finish(cx, p);
        }
    }
}
