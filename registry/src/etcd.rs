//! etcd v3 backend.
//!
//! Keys are `/dubbomesh/<service>/<host>:<port>` (the 2018 race layout); the value is
//! `{"weight":N,"meta":{...}}`, and an empty (or non-JSON) value means the default weight.
//! A service's traffic rules document is the value of `/dubbomesh-rules/<service>`, put
//! without a lease; a rules watch follows that one key as an instance watch follows its
//! prefix ([`follow`] serves both).
//! Everything runs on one current-thread tokio runtime on a dedicated thread per
//! [`Registry`](crate::Registry).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, WatchOptions,
};
use reactor::Backoff;
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};

use crate::rules::{self, Found};
use crate::{Error, Instance, RulesSink, Sink, DEFAULT_WEIGHT};

/// Key prefix of every registration.
pub(crate) const ROOT: &str = "/dubbomesh/";
/// Key prefix of the rules documents, one key a service.
pub(crate) const RULES_ROOT: &str = "/dubbomesh-rules/";
const RPC_TIMEOUT: Duration = Duration::from_secs(3);
const REVOKE_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const STALE_WARN_EVERY: Duration = Duration::from_secs(10);
/// A watcher delivers at most one list per this much time: a storm of n registrations
/// (every provider re-registering after an etcd restart) costs a few O(n) deliveries,
/// not n of them. The file registry polls at the same pace.
const DELIVER_EVERY: Duration = Duration::from_millis(50);

/// The cluster's endpoints; one is used at a time, and a failure moves every task of the
/// registry to the next one (tonic's balanced channel would keep sending requests to a
/// dead member).
#[derive(Debug)]
struct Endpoints {
    list: Vec<String>,
    cur: AtomicUsize,
}

impl Endpoints {
    fn current(&self) -> (usize, &str) {
        let i = self.cur.load(Ordering::Relaxed) % self.list.len();
        (i, &self.list[i])
    }

    /// Endpoint `i` failed: move on, unless another task already did.
    fn failed(&self, i: usize) {
        if self.list.len() > 1 {
            let next = (i + 1) % self.list.len();
            if self
                .cur
                .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                log::info!("etcd: {} failed, trying {}", self.list[i], self.list[next]);
            }
        }
    }
}

struct Shared {
    endpoints: Arc<Endpoints>,
    ttl: Duration,
    handle: tokio::runtime::Handle,
    /// The runtime's thread, on which the callbacks run.
    thread: std::thread::ThreadId,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Ok(mut s) = self.shutdown.lock() {
            if let Some(tx) = s.take() {
                let _ = tx.send(());
            }
        }
    }
}

pub(crate) struct EtcdBackend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("endpoints", &self.shared.endpoints.list)
            .field("ttl", &self.shared.ttl)
            .finish()
    }
}

pub(crate) struct EtcdRegistration {
    stop: watch::Sender<()>,
    done: Mutex<std_mpsc::Receiver<()>>,
    _shared: Arc<Shared>,
}

pub(crate) struct EtcdWatch {
    _stop: watch::Sender<()>,
    _shared: Arc<Shared>,
}

impl EtcdBackend {
    pub(crate) fn new(endpoints: Vec<String>, ttl: Duration) -> Result<Self, Error> {
        let (handle_tx, handle_rx) = std_mpsc::channel();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("registry-etcd".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok((rt.handle().clone(), std::thread::current().id())));
                rt.block_on(async {
                    let _ = shutdown_rx.await;
                });
            })?;
        let (handle, thread) = handle_rx
            .recv()
            .map_err(|_| Error::Shutdown)?
            .map_err(|e| Error::Etcd(format!("cannot build the tokio runtime: {e}")))?;
        Ok(EtcdBackend {
            shared: Arc::new(Shared {
                endpoints: Arc::new(Endpoints {
                    list: endpoints,
                    cur: AtomicUsize::new(0),
                }),
                ttl,
                handle,
                thread,
                shutdown: Mutex::new(Some(shutdown_tx)),
            }),
        })
    }

    pub(crate) fn register(&self, instance: Instance) -> Result<EtcdRegistration, Error> {
        let key = instance_key(&instance.service, &instance.addr);
        let value = encode_value(&instance);
        let (stop, stop_rx) = watch::channel(());
        let (first_tx, first_rx) = std_mpsc::channel();
        let (done_tx, done_rx) = std_mpsc::channel();
        let endpoints = self.shared.endpoints.clone();
        let ttl = self.shared.ttl;
        self.shared.handle.spawn(async move {
            keep_registered(endpoints, ttl, key, value, stop_rx, first_tx).await;
            let _ = done_tx.send(());
        });
        match first_rx.recv_timeout(RPC_TIMEOUT + Duration::from_secs(1)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!(
                "etcd registration of {} not done yet ({e}); retrying in the background",
                instance.addr
            ),
            Err(_) => log::warn!(
                "etcd registration of {} not done yet; retrying in the background",
                instance.addr
            ),
        }
        Ok(EtcdRegistration {
            stop,
            done: Mutex::new(done_rx),
            _shared: self.shared.clone(),
        })
    }

    pub(crate) fn watch(&self, service: &str, sink: Arc<Sink>) -> Result<EtcdWatch, Error> {
        Ok(self.follow(Instances {
            prefix: format!("{ROOT}{service}/"),
            service: service.to_owned(),
            map: BTreeMap::new(),
            delivered: None,
            sink,
        }))
    }

    pub(crate) fn watch_rules(
        &self,
        service: &str,
        sink: Arc<RulesSink>,
        skipped: Arc<AtomicU64>,
    ) -> Result<EtcdWatch, Error> {
        let key = rules_key(service);
        let what = format!("etcd key {key}");
        Ok(self.follow(RulesKey {
            key,
            tracker: rules::Tracker::new(what, sink, skipped),
        }))
    }

    fn follow(&self, watched: impl Followed + Send + 'static) -> EtcdWatch {
        let (stop, stop_rx) = watch::channel(());
        let endpoints = self.shared.endpoints.clone();
        self.shared
            .handle
            .spawn(follow(endpoints, watched, stop_rx));
        EtcdWatch {
            _stop: stop,
            _shared: self.shared.clone(),
        }
    }

    /// Puts (or deletes) the rules key, without a lease; each endpoint is tried once.
    pub(crate) fn put_rules(&self, service: &str, rules: Option<&str>) -> Result<(), Error> {
        if std::thread::current().id() == self.shared.thread {
            return Err(Error::Etcd(
                "put_rules cannot be called from a watch callback (it would block the \
                 registry's thread)"
                    .into(),
            ));
        }
        let key = rules_key(service);
        let rules = rules.map(str::to_owned);
        let endpoints = self.shared.endpoints.clone();
        let (done_tx, done_rx) = std_mpsc::channel();
        self.shared.handle.spawn(async move {
            let mut last = String::new();
            for _ in 0..endpoints.list.len() {
                let (ep, endpoint) = endpoints.current();
                let attempt = async {
                    let mut c = connect(endpoint).await?;
                    match &rules {
                        Some(doc) => timed(c.put(key.as_str(), doc.as_str(), None))
                            .await
                            .map(drop),
                        None => timed(c.delete(key.as_str(), None)).await.map(drop),
                    }
                };
                match attempt.await {
                    Ok(()) => {
                        let _ = done_tx.send(Ok(()));
                        return;
                    }
                    Err(e) => {
                        endpoints.failed(ep);
                        last = format!("{endpoint}: {e}");
                    }
                }
            }
            let _ = done_tx.send(Err(last));
        });
        let wait = (RPC_TIMEOUT * 2 + Duration::from_secs(1)) * self.endpoint_count();
        match done_rx.recv_timeout(wait) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Etcd(format!("storing the rules of {service}: {e}"))),
            Err(_) => Err(Error::Etcd(format!(
                "storing the rules of {service}: no answer within {wait:?}"
            ))),
        }
    }

    fn endpoint_count(&self) -> u32 {
        u32::try_from(self.shared.endpoints.list.len()).unwrap_or(u32::MAX)
    }
}

impl EtcdRegistration {
    pub(crate) fn stop(self) -> Result<(), Error> {
        let EtcdRegistration {
            stop,
            done,
            _shared,
        } = self;
        drop(stop);
        let done = done.lock().map_err(|_| Error::Shutdown)?;
        match done.recv_timeout(REVOKE_TIMEOUT + Duration::from_millis(500)) {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::Etcd(
                "deregistration did not finish in time (lease will expire)".into(),
            )),
        }
    }
}

pub(crate) fn instance_key(service: &str, addr: &str) -> String {
    format!("{ROOT}{service}/{addr}")
}

/// The key of `service`'s rules document: outside [`ROOT`], so that no instance watch
/// (of any service) sees it.
pub(crate) fn rules_key(service: &str) -> String {
    format!("{RULES_ROOT}{service}")
}

fn encode_value(i: &Instance) -> String {
    json!({ "weight": i.weight, "meta": i.meta }).to_string()
}

/// Decodes one key/value under `prefix` (`/dubbomesh/<service>/`); `None` if not an instance.
fn decode(prefix: &str, service: &str, kv: &KeyValue) -> Option<Instance> {
    let key = kv.key_str().ok()?;
    let addr = key.strip_prefix(prefix)?;
    if addr.is_empty() || addr.contains('/') {
        return None;
    }
    let mut inst = Instance::new(service, addr);
    let value = kv.value();
    if value.iter().all(u8::is_ascii_whitespace) {
        return Some(inst);
    }
    match serde_json::from_slice::<Value>(value) {
        Ok(Value::Object(o)) => {
            inst.weight = o
                .get("weight")
                .and_then(Value::as_u64)
                .and_then(|w| u32::try_from(w).ok())
                .unwrap_or(DEFAULT_WEIGHT);
            if let Some(Value::Object(m)) = o.get("meta") {
                for (k, v) in m {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    inst.meta.insert(k.clone(), v);
                }
            }
        }
        _ => log::debug!("etcd: value of {key} is not a JSON object; default weight"),
    }
    Some(inst)
}

async fn connect(endpoint: &str) -> Result<Client, String> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(3), Duration::from_secs(3))
        // A member cut off from the cluster's leader fails the watch instead of keeping
        // it open without events.
        .with_require_leader(true);
    timed(Client::connect([endpoint], Some(opts))).await
}

async fn timed<T, F>(f: F) -> Result<T, String>
where
    F: Future<Output = Result<T, etcd_client::Error>>,
{
    match tokio::time::timeout(RPC_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

trait WarnDue {
    /// `true` if no warning was logged yet, or the last one is [`STALE_WARN_EVERY`] old.
    fn is_none_or_elapsed(&self, now: Instant) -> bool;
}

impl WarnDue for Option<Instant> {
    fn is_none_or_elapsed(&self, now: Instant) -> bool {
        match self {
            None => true,
            Some(w) => now.duration_since(*w) >= STALE_WARN_EVERY,
        }
    }
}

/// The retry delays: [`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`], each jittered to
/// between half and all of it; after an etcd restart every provider's registration
/// retries, and without jitter they would all retry in the same instant.
fn backoff() -> Backoff {
    Backoff::new(BACKOFF_MIN, BACKOFF_MAX)
}

/// Sleeps `backoff`'s next delay; `false` if stopped meanwhile.
async fn back_off(backoff: &mut Backoff, stop: &mut watch::Receiver<()>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(backoff.next_delay()) => true,
        _ = stop.changed() => false,
    }
}

/// Registers `key` with a lease and keeps it alive; re-registers after a lost lease or a
/// broken connection; revokes the lease when stopped.
async fn keep_registered(
    endpoints: Arc<Endpoints>,
    ttl: Duration,
    key: String,
    value: String,
    mut stop: watch::Receiver<()>,
    first: std_mpsc::Sender<Result<(), String>>,
) {
    let ttl_secs = ttl.as_secs().max(1) as i64;
    let tick_every = (ttl / 3).max(Duration::from_millis(300));
    let mut first = Some(first);
    let mut backoff = backoff();
    // The lease our key is attached to, with a client to revoke it.
    let mut current: Option<(Client, i64)> = None;
    let mut last_warn: Option<Instant> = None;
    'outer: loop {
        let (ep, endpoint) = endpoints.current();
        // A lease granted by an attempt a stop cuts short: revoked below, not orphaned.
        let mut granted: Option<(Client, i64)> = None;
        let attempt = async {
            let mut c = connect(endpoint).await?;
            let lease = timed(c.lease_grant(ttl_secs, None)).await?.id();
            granted = Some((c.clone(), lease));
            timed(c.put(
                key.as_str(),
                value.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            ))
            .await?;
            let (keeper, stream) = timed(c.lease_keep_alive(lease)).await?;
            Ok::<_, String>((c, lease, keeper, stream))
        };
        let res = tokio::select! {
            r = attempt => r,
            _ = stop.changed() => {
                if let Some((mut c, lease)) = granted {
                    let _ = tokio::time::timeout(REVOKE_TIMEOUT, c.lease_revoke(lease)).await;
                }
                break 'outer;
            }
        };
        let (mut client, lease, mut keeper, mut stream) = match res {
            Ok(x) => x,
            Err(e) => {
                endpoints.failed(ep);
                let now = Instant::now();
                if last_warn.is_none_or_elapsed(now) {
                    log::warn!("etcd: registering {key} failed: {e}; retrying with backoff");
                    last_warn = Some(now);
                } else {
                    log::debug!("etcd: registering {key} failed: {e}; retrying");
                }
                if let Some(f) = first.take() {
                    let _ = f.send(Err(e));
                }
                if !back_off(&mut backoff, &mut stop).await {
                    break 'outer;
                }
                continue;
            }
        };
        // The key now lives on the new lease: the old one (if any) can go.
        if let Some((_, old)) = current.take() {
            let _ = tokio::time::timeout(REVOKE_TIMEOUT, client.lease_revoke(old)).await;
        }
        current = Some((client.clone(), lease));
        log::info!("etcd: registered {key} (lease {lease:x}, ttl {ttl_secs}s)");
        if let Some(f) = first.take() {
            let _ = f.send(Ok(()));
        }
        backoff.reset();
        last_warn = None;
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                _ = stop.changed() => break 'outer,
                _ = tick.tick() => {}
            }
            // Once a TTL, also check the key itself: deleted under a live lease (by an
            // operator, or another registrant of the address), it is put back.
            let check_key = ticks % 3 == 2;
            ticks += 1;
            // One keep-alive round trip, cut short by a stop: a deregistration does not
            // wait for it (and the caller's wait for the revoke is bounded).
            let round = async {
                keeper
                    .keep_alive()
                    .await
                    .map_err(|e| format!("keep-alive of {key} failed: {e}"))?;
                let alive = match tokio::time::timeout(RPC_TIMEOUT, stream.message()).await {
                    Ok(Ok(Some(r))) => r.ttl() > 0,
                    Ok(Ok(None)) => return Err(format!("keep-alive stream of {key} closed")),
                    Ok(Err(e)) => return Err(format!("keep-alive of {key} failed: {e}")),
                    Err(_) => return Err(format!("keep-alive of {key} timed out")),
                };
                if alive && check_key {
                    let count_only = GetOptions::new().with_count_only();
                    if timed(client.get(key.as_str(), Some(count_only)))
                        .await?
                        .count()
                        == 0
                    {
                        log::warn!("etcd: {key} was deleted under its live lease; putting it back");
                        let on_lease = PutOptions::new().with_lease(lease);
                        timed(client.put(key.as_str(), value.as_str(), Some(on_lease))).await?;
                    }
                }
                Ok(alive)
            };
            let alive = tokio::select! {
                r = round => r,
                _ = stop.changed() => break 'outer,
            };
            match alive {
                Ok(true) => {}
                Ok(false) => {
                    log::warn!("etcd: lease of {key} lost; re-registering");
                    current = None;
                    continue 'outer; // etcd is fine: at once, same endpoint
                }
                Err(e) => {
                    log::warn!("etcd: {e}; re-registering");
                    break;
                }
            }
        }
        endpoints.failed(ep);
        if !back_off(&mut backoff, &mut stop).await {
            break 'outer;
        }
    }
    if let Some((mut c, lease)) = current {
        match tokio::time::timeout(REVOKE_TIMEOUT, c.lease_revoke(lease)).await {
            Ok(Ok(_)) => log::info!("etcd: deregistered {key}"),
            Ok(Err(e)) => log::warn!("etcd: revoking the lease of {key}: {e}"),
            Err(_) => log::warn!("etcd: revoking the lease of {key} timed out"),
        }
    }
}

/// What a watch follows in etcd, and what it makes of it: the instances under a prefix
/// ([`Instances`]) or one service's rules document ([`RulesKey`]). [`follow`] does the
/// rest, the same for both.
trait Followed {
    /// The key watched, or the prefix (see [`is_prefix`](Followed::is_prefix)).
    fn key(&self) -> &str;
    /// Whether [`key`](Followed::key) is a prefix.
    fn is_prefix(&self) -> bool;
    /// Whether the watch was dropped.
    fn is_stopped(&self) -> bool;
    /// Takes a full read of the key (or prefix) instead of what was known.
    fn reset(&mut self, kvs: &[KeyValue]);
    /// Takes one event: a put (`true`) or a delete of `kv`.
    fn apply(&mut self, put: bool, kv: &KeyValue);
    /// Delivers the state if it is not what was delivered last.
    fn deliver(&mut self);
    /// What the watch keeps while etcd is unreachable, for a warning (`None`: nothing
    /// delivered yet).
    fn kept(&self) -> Option<String>;
}

/// The instances of a service: keys `/dubbomesh/<service>/<host>:<port>`.
struct Instances {
    prefix: String,
    service: String,
    /// addr -> instance
    map: BTreeMap<String, Instance>,
    delivered: Option<Vec<Instance>>,
    sink: Arc<Sink>,
}

impl Followed for Instances {
    fn key(&self) -> &str {
        &self.prefix
    }

    fn is_prefix(&self) -> bool {
        true
    }

    fn is_stopped(&self) -> bool {
        self.sink.is_stopped()
    }

    fn reset(&mut self, kvs: &[KeyValue]) {
        self.map.clear();
        for kv in kvs {
            if let Some(i) = decode(&self.prefix, &self.service, kv) {
                self.map.insert(i.addr.clone(), i);
            }
        }
    }

    fn apply(&mut self, put: bool, kv: &KeyValue) {
        if put {
            if let Some(i) = decode(&self.prefix, &self.service, kv) {
                self.map.insert(i.addr.clone(), i);
            }
        } else if let Some(addr) = kv.key_str().ok().and_then(|k| k.strip_prefix(&self.prefix)) {
            self.map.remove(addr);
        }
    }

    fn deliver(&mut self) {
        let list: Vec<Instance> = self.map.values().cloned().collect();
        if self.delivered.as_ref() != Some(&list) {
            self.delivered = Some(list.clone());
            self.sink.deliver(list);
        }
    }

    fn kept(&self) -> Option<String> {
        let list = self.delivered.as_ref()?;
        Some(format!("the last list of {} instance(s)", list.len()))
    }
}

/// The rules document of a service: the key `/dubbomesh-rules/<service>`.
struct RulesKey {
    key: String,
    tracker: rules::Tracker,
}

impl RulesKey {
    fn found(kv: &KeyValue) -> Found<'_> {
        Found::Doc {
            bytes: kv.value(),
            // A revision is never negative.
            version: u64::try_from(kv.mod_revision()).unwrap_or(0),
        }
    }
}

impl Followed for RulesKey {
    fn key(&self) -> &str {
        &self.key
    }

    fn is_prefix(&self) -> bool {
        false
    }

    fn is_stopped(&self) -> bool {
        self.tracker.is_stopped()
    }

    fn reset(&mut self, kvs: &[KeyValue]) {
        match kvs.iter().find(|kv| kv.key() == self.key.as_bytes()) {
            Some(kv) => self.tracker.note(RulesKey::found(kv)),
            None => self.tracker.note(Found::Absent),
        }
    }

    fn apply(&mut self, put: bool, kv: &KeyValue) {
        if kv.key() != self.key.as_bytes() {
            return;
        }
        match put {
            true => self.tracker.note(RulesKey::found(kv)),
            false => self.tracker.note(Found::Absent),
        }
    }

    fn deliver(&mut self) {
        self.tracker.deliver();
    }

    fn kept(&self) -> Option<String> {
        self.tracker.kept()
    }
}

/// Follows `watched` until the watch is dropped: reads it once, then follows a watch
/// stream, delivering at most once per [`DELIVER_EVERY`]. After a broken stream it
/// resumes from the last revision seen, or reads everything again if that revision was
/// compacted (or etcd's revision went back); while etcd is unreachable it retries with
/// backoff, keeps what it delivered, and warns that it is stale.
async fn follow<F: Followed>(
    endpoints: Arc<Endpoints>,
    mut watched: F,
    mut stop: watch::Receiver<()>,
) {
    let key = watched.key().to_owned();
    let (get_opts, watch_opts) = match watched.is_prefix() {
        true => (
            GetOptions::new().with_prefix(),
            WatchOptions::new().with_prefix(),
        ),
        false => (GetOptions::new(), WatchOptions::new()),
    };
    // The last revision applied (0: a full read is needed).
    let mut rev: i64 = 0;
    let mut backoff = backoff();
    let mut stale_since: Option<Instant> = None;
    let mut stale_warned: Option<Instant> = None;
    loop {
        if watched.is_stopped() {
            return;
        }
        let (ep, endpoint) = endpoints.current();
        let attempt = async {
            let mut c = connect(endpoint).await?;
            if rev == 0 {
                let resp = timed(c.get(key.as_str(), Some(get_opts.clone()))).await?;
                watched.reset(resp.kvs());
                rev = resp.header().map(|h| h.revision()).unwrap_or(0);
                watched.deliver();
            }
            let opts = watch_opts.clone().with_start_revision(rev + 1);
            let stream = timed(c.watch(key.as_str(), Some(opts))).await?;
            Ok::<_, String>((c, stream))
        };
        let res = tokio::select! {
            r = attempt => r,
            _ = stop.changed() => return,
        };
        let mut stream = match res {
            Ok((_client, stream)) => stream,
            Err(e) => {
                endpoints.failed(ep);
                let kept = watched.kept();
                note_stale(&key, &e, kept, &mut stale_since, &mut stale_warned);
                if !back_off(&mut backoff, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        if let Some(since) = stale_since.take() {
            log::info!(
                "etcd: watch of {key} is live again after {:.1}s",
                since.elapsed().as_secs_f64()
            );
            stale_warned = None;
        }
        backoff.reset();
        // Changes applied but not yet delivered, and when the last delivery went out.
        let mut pending = false;
        let mut delivered_at = tokio::time::Instant::now() - DELIVER_EVERY;
        let err = loop {
            // `message` keeps its state in the stream, so losing the race to the
            // delivery timer loses nothing.
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = tokio::time::sleep_until(delivered_at + DELIVER_EVERY), if pending => {
                    watched.deliver();
                    pending = false;
                    delivered_at = tokio::time::Instant::now();
                    continue;
                }
                _ = stop.changed() => return,
            };
            match msg {
                Ok(Some(resp)) => {
                    // etcd's revision went back: it lost its data (recreated without a
                    // volume) or was restored from a snapshot. Events below our resume
                    // point would never come, so read everything again.
                    let now = resp.header().map_or(rev, |h| h.revision());
                    if now < rev {
                        log::warn!(
                            "etcd: revision of {key} went back from {rev} to {now} \
                             (etcd lost or restored its data); full read"
                        );
                        rev = 0;
                        break None;
                    }
                    if resp.compact_revision() > 0 {
                        log::warn!(
                            "etcd: revision {} of {key} compacted (now {}); full read",
                            rev + 1,
                            resp.compact_revision()
                        );
                        rev = 0;
                        break None;
                    }
                    if resp.canceled() {
                        rev = 0;
                        break Some(format!("watch canceled: {}", resp.cancel_reason()));
                    }
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        rev = rev.max(kv.mod_revision());
                        watched.apply(ev.event_type() == EventType::Put, kv);
                    }
                    if !resp.events().is_empty() {
                        let now = tokio::time::Instant::now();
                        if now >= delivered_at + DELIVER_EVERY {
                            watched.deliver();
                            pending = false;
                            delivered_at = now;
                        } else {
                            pending = true;
                        }
                    }
                }
                Ok(None) => break Some("watch stream closed".to_owned()),
                Err(e) => break Some(e.to_string()),
            }
        };
        if pending {
            watched.deliver();
        }
        if let Some(e) = err {
            endpoints.failed(ep);
            let kept = watched.kept();
            note_stale(&key, &e, kept, &mut stale_since, &mut stale_warned);
            if !back_off(&mut backoff, &mut stop).await {
                return;
            }
        }
    }
}

fn note_stale(
    key: &str,
    err: &str,
    kept: Option<String>,
    since: &mut Option<Instant>,
    warned: &mut Option<Instant>,
) {
    let now = Instant::now();
    let since = *since.get_or_insert(now);
    if warned.is_none_or_elapsed(now) {
        *warned = Some(now);
        match kept {
            Some(kept) => log::warn!(
                "etcd unreachable for {key} ({err}); keeping {kept}, stale for {:.1}s",
                now.duration_since(since).as_secs_f64()
            ),
            None => log::warn!("etcd unreachable for {key} ({err}); nothing delivered yet"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_min_to_max_with_jitter() {
        let mut b = backoff();
        let nominal = [100u64, 200, 400, 800, 1600, 2000, 2000];
        for (i, n) in nominal.iter().enumerate() {
            let (n, d) = (Duration::from_millis(*n), b.next_delay());
            assert!(d >= n / 2 && d <= n, "{i}: {d:?} vs {n:?}");
        }
        b.reset();
        assert!(b.next_delay() <= BACKOFF_MIN);
    }
}
