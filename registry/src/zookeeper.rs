//! ZooKeeper backend, in Apache Dubbo's own layout.
//!
//! A provider is the ephemeral node `<root>/<interface>/providers/<URL.encode(url)>` with
//! empty data (see [`crate::dubbo_url`]); a watcher keeps the ephemeral
//! `<root>/<interface>/consumers/<URL.encode(consumer url)>` while it lives, as Dubbo
//! consumers do. The parents are persistent and created when missing. Dubbo's Java, Go and
//! Node clients and its ops tools (Dubbo Admin) read and write the same tree. A service's
//! traffic rules document is the data of the persistent node
//! `<root>/<interface>/mesh-rules`, a child Dubbo passes over; a rules watch follows that
//! node's data as an instance watch follows the providers' children ([`watch_loop`]
//! serves both).
//!
//! Each [`Registry`](crate::Registry) runs one current-thread tokio runtime on a dedicated
//! thread, and one ZooKeeper session shared by its registrations and watches (opened when
//! the first needs it, closed when the last is gone, replaced when it expires).
//! `zookeeper-client` spawns its session task through the `spawns` crate (via `asyncs`):
//! the runtime's thread enters a [`spawns_core::enter`] scope that hands every such task to
//! the runtime, so no global executor is looked up (no `linkme` registration either).

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reactor::Backoff;
use tokio::sync::{oneshot, watch};
use zookeeper_client as zk;

use crate::dubbo_url::{self, Decoded};
use crate::rules::{self, Found};
use crate::url::is_zookeeper_path_char;
use crate::{Error, Instance, RulesSink, Sink, Variant};

/// How long `register` waits for the first create before going on in the background.
const FIRST_WAIT: Duration = Duration::from_secs(5);
/// Bound of the deletion of a node when its registration or watch stops.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const STALE_WARN_EVERY: Duration = Duration::from_secs(10);
/// A watcher reads the children (and delivers) at most once per this much time: a storm
/// of n registrations costs a few O(n) reads, not n of them. As etcd's and the file
/// registry's watchers.
const DELIVER_EVERY: Duration = Duration::from_millis(50);
/// How long `put_rules` waits for the node to be set (or deleted).
const PUT_WAIT: Duration = Duration::from_secs(5);
/// The node, next to `providers` and `consumers`, whose data is a service's traffic rules
/// document. Dubbo's clients and tools pass over children they do not know.
const RULES_NODE: &str = "mesh-rules";
/// How long a shutting-down registry waits for its stopped tasks and for the session's
/// close.
const SHUTDOWN_WAIT: Duration = Duration::from_millis(1500);

/// One node ZooKeeper refuses no character of: the service names of this crate are
/// checked by [`crate::validate_service`], and must also be valid ZooKeeper node names.
fn check_service(service: &str) -> Result<(), Error> {
    if let Some(c) = service.chars().find(|c| !is_zookeeper_path_char(*c)) {
        return Err(Error::InvalidInstance(format!(
            "service name {service:?} has a character ZooKeeper refuses: {c:?}"
        )));
    }
    Ok(())
}

/// Hands the tasks `zookeeper-client` spawns (through `asyncs`/`spawns`) to our runtime.
struct TokioSpawner(tokio::runtime::Handle);

impl spawns_core::Spawn for TokioSpawner {
    fn spawn(&self, task: spawns_core::Task) {
        drop(self.0.spawn(Box::into_pin(task.future)));
    }
}

/// The registry's ZooKeeper session, shared by its tasks.
struct Hub {
    /// `h1:p1,h2:p2`
    connect: String,
    /// The first server (`host:port`), to find the local address consumers register.
    first_server: String,
    session_timeout: Duration,
    /// The current session's client, if one was opened and is still used.
    slot: Mutex<Option<zk::Client>>,
    /// Sessions let go of, until they are closed (waited for at shutdown).
    closing: Mutex<Vec<zk::StateWatcher>>,
    /// One connection attempt at a time: two tasks finding no session open one.
    connecting: tokio::sync::Mutex<()>,
    /// Tasks using the session: at 0 it is closed.
    users: AtomicUsize,
}

/// One task's use of the [`Hub`]'s session; the last one dropped closes it.
struct User(Arc<Hub>);

impl Drop for User {
    fn drop(&mut self) {
        if self.0.users.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.release();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Hub {
    fn user(self: &Arc<Self>) -> User {
        self.users.fetch_add(1, Ordering::AcqRel);
        User(self.clone())
    }

    /// The session's client while the session lives (connected or not).
    fn live(&self) -> Option<zk::Client> {
        lock(&self.slot)
            .as_ref()
            .filter(|c| !c.state().is_terminated())
            .cloned()
    }

    /// The session's client, opening a session if there is none or it has ended.
    async fn client(&self) -> Result<zk::Client, String> {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.live() {
            return Ok(c);
        }
        // Fail after one round of the servers (not after a whole session timeout) so that
        // the caller's backoff and warnings run; an established session reconnects by
        // itself, through every server, until it expires.
        let connector = zk::Client::connector()
            .with_session_timeout(self.session_timeout)
            .with_fail_eagerly();
        let limit = self.session_timeout + Duration::from_secs(1);
        let client = match tokio::time::timeout(limit, connector.connect(&self.connect)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(format!("cannot open a session with {}: {e}", self.connect)),
            Err(_) => {
                return Err(format!(
                    "cannot open a session with {}: timed out after {limit:?}",
                    self.connect
                ))
            }
        };
        log::info!(
            "zookeeper: session {} open with {} (timeout {} ms)",
            client.session_id(),
            self.connect,
            client.session_timeout().as_millis()
        );
        let old = lock(&self.slot).replace(client.clone());
        if let Some(old) = old {
            log::info!("zookeeper: session {} replaced", old.session_id());
        }
        Ok(client)
    }

    /// No task uses the session any more: close it (the client's own task sends the
    /// close request once the last clone of the client is gone).
    fn release(&self) {
        if let Some(c) = lock(&self.slot).take() {
            log::debug!("zookeeper: closing session {} (unused)", c.session_id());
            let mut closing = lock(&self.closing);
            // Those closed already need no wait (sessions opened for a `put_rules` each).
            closing.retain(|w| !w.peek_state().is_terminated());
            closing.push(c.state_watcher());
        }
    }

    /// At shutdown: waits (bounded) until the tasks are gone and the sessions closed.
    async fn shut_down(&self) {
        let end = tokio::time::Instant::now() + SHUTDOWN_WAIT;
        while self.users.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.release();
        let closing: Vec<zk::StateWatcher> = std::mem::take(&mut *lock(&self.closing));
        for mut w in closing {
            let closed = async {
                while !w.peek_state().is_terminated() {
                    w.changed().await;
                }
            };
            let _ = tokio::time::timeout_at(end, closed).await;
        }
    }
}

struct Shared {
    hub: Arc<Hub>,
    root: String,
    skipped: Arc<AtomicU64>,
    handle: tokio::runtime::Handle,
    thread: std::thread::ThreadId,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(tx) = lock(&self.shutdown).take() {
            let _ = tx.send(());
        }
    }
}

pub(crate) struct ZkBackend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ZkBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkBackend")
            .field("servers", &self.shared.hub.connect)
            .field("root", &self.shared.root)
            .field("session_timeout", &self.shared.hub.session_timeout)
            .finish()
    }
}

pub(crate) struct ZkRegistration {
    stop: watch::Sender<()>,
    done: Mutex<std_mpsc::Receiver<()>>,
    shared: Arc<Shared>,
}

pub(crate) struct ZkWatch {
    _stop: watch::Sender<()>,
    _shared: Arc<Shared>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl ZkBackend {
    pub(crate) fn new(
        servers: Vec<String>,
        root: String,
        session_timeout: Duration,
        skipped: Arc<AtomicU64>,
    ) -> Result<Self, Error> {
        let first_server = servers.first().cloned().ok_or_else(|| {
            Error::InvalidUrl("a zookeeper:// URL needs at least one server".into())
        })?;
        let hub = Arc::new(Hub {
            connect: servers.join(","),
            first_server,
            session_timeout,
            slot: Mutex::new(None),
            closing: Mutex::new(Vec::new()),
            connecting: tokio::sync::Mutex::new(()),
            users: AtomicUsize::new(0),
        });
        let (handle_tx, handle_rx) = std_mpsc::channel();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let hub_rt = hub.clone();
        std::thread::Builder::new()
            .name("registry-zk".into())
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
                let spawner = TokioSpawner(rt.handle().clone());
                let scope = spawns_core::enter(&spawner);
                let _ = handle_tx.send(Ok((rt.handle().clone(), std::thread::current().id())));
                rt.block_on(async {
                    let _ = shutdown_rx.await;
                    hub_rt.shut_down().await;
                });
                // Tasks left are dropped here, inside the spawner's scope.
                drop(rt);
                drop(scope);
            })?;
        let (handle, thread) = handle_rx
            .recv()
            .map_err(|_| Error::Shutdown)?
            .map_err(|e| Error::ZooKeeper(format!("cannot build the tokio runtime: {e}")))?;
        Ok(ZkBackend {
            shared: Arc::new(Shared {
                hub,
                root,
                skipped,
                handle,
                thread,
                shutdown: Mutex::new(Some(shutdown_tx)),
            }),
        })
    }

    pub(crate) fn register(&self, instance: Instance) -> Result<ZkRegistration, Error> {
        check_service(&instance.service)?;
        // One node per version and group served, as Dubbo registers one URL per exported
        // service key: Dubbo consumers match a node by its own `version` and `group`.
        let now = now_ms();
        let mut paths = Vec::new();
        for one in per_variant(&instance) {
            let url = dubbo_url::provider_url(&one, now).map_err(Error::InvalidInstance)?;
            paths.push(format!(
                "{}/{}/providers/{}",
                self.shared.root,
                instance.service,
                dubbo_url::form_encode(&url)
            ));
        }
        let (stop, stop_rx) = watch::channel(());
        let (first_tx, first_rx) = std_mpsc::channel();
        let (done_tx, done_rx) = std_mpsc::channel();
        let what = format!("provider {} of {}", instance.addr, instance.service);
        let nodes = paths.len();
        let mut tasks = tokio::task::JoinSet::new();
        for path in paths {
            let (hub, what) = (self.shared.hub.clone(), what.clone());
            let (stop_rx, first_tx) = (stop_rx.clone(), first_tx.clone());
            tasks.spawn_on(
                keep_node(hub, path, what, stop_rx, Some(first_tx)),
                &self.shared.handle,
            );
        }
        drop(first_tx);
        self.shared.handle.spawn(async move {
            while tasks.join_next().await.is_some() {}
            let _ = done_tx.send(());
        });
        let deadline = Instant::now() + FIRST_WAIT;
        for _ in 0..nodes {
            let left = deadline.saturating_duration_since(Instant::now());
            match first_rx.recv_timeout(left) {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => log::warn!(
                    "zookeeper registration of {} not done yet ({e}); retrying in the background",
                    instance.addr
                ),
                Err(_) => log::warn!(
                    "zookeeper registration of {} not done yet; retrying in the background",
                    instance.addr
                ),
            }
            break;
        }
        Ok(ZkRegistration {
            stop,
            done: Mutex::new(done_rx),
            shared: self.shared.clone(),
        })
    }

    pub(crate) fn watch(&self, service: &str, sink: Arc<Sink>) -> Result<ZkWatch, Error> {
        check_service(service)?;
        let (stop, stop_rx) = watch::channel(());
        let shared = &self.shared;
        let providers = Providers {
            service: service.to_owned(),
            dir: format!("{}/{service}/providers", shared.root),
            bad: HashSet::new(),
            skipped: shared.skipped.clone(),
            delivered: None,
            sink,
        };
        shared
            .handle
            .spawn(watch_loop(shared.hub.clone(), providers, stop_rx.clone()));
        shared.handle.spawn(keep_consumer(
            shared.hub.clone(),
            shared.root.clone(),
            service.to_owned(),
            stop_rx,
        ));
        Ok(ZkWatch {
            _stop: stop,
            _shared: shared.clone(),
        })
    }

    pub(crate) fn watch_rules(
        &self,
        service: &str,
        sink: Arc<RulesSink>,
    ) -> Result<ZkWatch, Error> {
        check_service(service)?;
        let (stop, stop_rx) = watch::channel(());
        let shared = &self.shared;
        let path = self.rules_path(service);
        let what = format!("ZooKeeper node {path}");
        let node = RulesNode {
            path,
            tracker: rules::Tracker::new(what, sink, shared.skipped.clone()),
        };
        shared
            .handle
            .spawn(watch_loop(shared.hub.clone(), node, stop_rx));
        Ok(ZkWatch {
            _stop: stop,
            _shared: shared.clone(),
        })
    }

    /// The persistent node whose data is `service`'s rules document.
    fn rules_path(&self, service: &str) -> String {
        format!("{}/{service}/{RULES_NODE}", self.shared.root)
    }

    /// Sets (creating it and its parents if missing) or deletes the rules node, in the
    /// registry's session (opened for the while if there is none).
    pub(crate) fn put_rules(&self, service: &str, rules: Option<&str>) -> Result<(), Error> {
        check_service(service)?;
        let shared = &self.shared;
        if std::thread::current().id() == shared.thread {
            return Err(Error::ZooKeeper(
                "put_rules cannot be called from a watch callback (it would block the \
                 registry's thread)"
                    .into(),
            ));
        }
        let path = self.rules_path(service);
        let data = rules.map(|d| d.as_bytes().to_vec());
        let hub = shared.hub.clone();
        let (done_tx, done_rx) = std_mpsc::channel();
        shared.handle.spawn(async move {
            let _user = hub.user();
            let put = async {
                let c = hub.client().await?;
                store_rules(&c, &path, data.as_deref()).await
            };
            let r = tokio::time::timeout(PUT_WAIT, put)
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {PUT_WAIT:?}")));
            let _ = done_tx.send(r);
        });
        match done_rx.recv_timeout(PUT_WAIT + Duration::from_millis(500)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::ZooKeeper(format!(
                "storing the rules of {service}: {e}"
            ))),
            Err(_) => Err(Error::ZooKeeper(format!(
                "storing the rules of {service}: no answer within {PUT_WAIT:?}"
            ))),
        }
    }
}

/// Sets the data of the persistent node `path` to `data` (creating it, and its parents,
/// if missing), or deletes it (`None`; missing is fine).
async fn store_rules(c: &zk::Client, path: &str, data: Option<&[u8]>) -> Result<(), String> {
    let Some(data) = data else {
        return match c.delete(path, None).await {
            Ok(()) | Err(zk::Error::NoNode) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
    };
    for _ in 0..4 {
        match c.set_data(path, data, None).await {
            Ok(_) => return Ok(()),
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(e.to_string()),
        }
        match c.create(path, data, &PERSISTENT).await {
            Ok(_) => return Ok(()),
            Err(zk::Error::NoNode) => make_parents(c, path)
                .await
                .map_err(|e| format!("creating the parents: {e}"))?,
            // Created meanwhile: set it.
            Err(zk::Error::NodeExists) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("the node kept changing under us".into())
}

/// `instance` once per variant it serves, each naming its own `version` and `group`
/// (none: the meta says none), without the `variants` list.
fn per_variant(instance: &Instance) -> Vec<Instance> {
    if !instance.meta.contains_key(crate::variant::VARIANTS_META) {
        return vec![instance.clone()];
    }
    instance
        .variants()
        .into_iter()
        .map(|v| {
            let mut one = instance.clone();
            one.meta.remove(crate::variant::VARIANTS_META);
            for (key, value) in [("version", v.version), ("group", v.group)] {
                if value.is_empty() {
                    one.meta.remove(key);
                } else {
                    one.meta.insert(key.to_owned(), value);
                }
            }
            one
        })
        .collect()
}

impl ZkRegistration {
    pub(crate) fn stop(self) -> Result<(), Error> {
        let ZkRegistration { stop, done, shared } = self;
        drop(stop);
        // Dropped from a watch callback (on the runtime's own thread): waiting would only
        // hold up the deletion it waits for.
        if std::thread::current().id() == shared.thread {
            return Ok(());
        }
        let done = lock(&done);
        match done.recv_timeout(REMOVE_TIMEOUT + Duration::from_millis(500)) {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::ZooKeeper(
                "deregistration did not finish in time (the node goes when the session ends)"
                    .into(),
            )),
        }
    }
}

/// The retry delays: [`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`], jittered (as etcd's).
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

/// `true` if no warning was logged yet, or the last one is [`STALE_WARN_EVERY`] old.
fn warn_due(last: &Option<Instant>, now: Instant) -> bool {
    match last {
        None => true,
        Some(w) => now.duration_since(*w) >= STALE_WARN_EVERY,
    }
}

/// A node name for a log line: at most 160 characters.
fn short(name: &str) -> String {
    if name.len() <= 160 {
        return name.to_owned();
    }
    let mut end = 160;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...({} bytes)", &name[..end], name.len())
}

const EPHEMERAL: zk::CreateOptions<'static> =
    zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
const PERSISTENT: zk::CreateOptions<'static> =
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());

/// Creates the persistent ancestors of `path` that are missing.
async fn make_parents(c: &zk::Client, path: &str) -> Result<(), zk::Error> {
    let mut end = 0;
    while let Some(i) = path[end + 1..].find('/') {
        end += 1 + i;
        match c.create(&path[..end], &[], &PERSISTENT).await {
            Ok(_) | Err(zk::Error::NodeExists) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates the ephemeral `path` in `c`'s session, with its parents if missing. A node of
/// that name left by another session (an expired one of ours, not yet removed by the
/// server) is replaced, as Dubbo does, but atomically (one multi-op).
async fn create_ephemeral(c: &zk::Client, path: &str) -> Result<(), String> {
    let mut made_parents = false;
    for _ in 0..4 {
        match c.create(path, &[], &EPHEMERAL).await {
            Ok(_) => return Ok(()),
            Err(zk::Error::NoNode) if !made_parents => {
                make_parents(c, path)
                    .await
                    .map_err(|e| format!("creating the parents: {e}"))?;
                made_parents = true;
            }
            Err(zk::Error::NodeExists) => match c.check_stat(path).await {
                Ok(Some(stat)) if stat.ephemeral_owner == c.session_id().0 => return Ok(()),
                Ok(Some(stat)) => {
                    log::info!(
                        "zookeeper: {} was left by session {:#x}; replacing it",
                        short(path),
                        stat.ephemeral_owner
                    );
                    // Delete and create in one transaction: watchers never see it gone.
                    let mut replace = c.new_multi_writer();
                    replace
                        .add_delete(path, Some(stat.version))
                        .and_then(|()| replace.add_create(path, &[], &EPHEMERAL))
                        .map_err(|e| e.to_string())?;
                    match replace.commit().await.map_err(zk::Error::from) {
                        Ok(_) => return Ok(()),
                        // Changed or gone meanwhile: look again.
                        Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => {}
                        Err(e) => return Err(format!("replacing the old node: {e}")),
                    }
                }
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            },
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("the node kept changing under us".into())
}

/// Keeps the ephemeral node `path` in place until stopped: created again after its
/// session ended (in a new one), after someone deleted it, and retried with backoff while
/// ZooKeeper is unreachable. Deleted when stopped (bounded by [`REMOVE_TIMEOUT`]).
async fn keep_node(
    hub: Arc<Hub>,
    path: String,
    what: String,
    mut stop: watch::Receiver<()>,
    mut first: Option<std_mpsc::Sender<Result<(), String>>>,
) {
    let user = hub.user();
    let mut backoff = backoff();
    let mut last_warn: Option<Instant> = None;
    // The client of the session the node was last created in.
    let mut current: Option<zk::Client> = None;
    'outer: loop {
        let attempt = async {
            let c = hub.client().await?;
            create_ephemeral(&c, &path).await?;
            Ok::<_, String>(c)
        };
        let c = tokio::select! {
            r = attempt => r,
            _ = stop.changed() => break 'outer,
        };
        let c = match c {
            Ok(c) => c,
            Err(e) => {
                let now = Instant::now();
                if warn_due(&last_warn, now) {
                    log::warn!(
                        "zookeeper: registering {what} failed: {e}; retrying with backoff \
                         (100 ms doubling to 2 s)"
                    );
                    last_warn = Some(now);
                } else {
                    log::debug!("zookeeper: registering {what} failed: {e}; retrying");
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
        log::info!(
            "zookeeper: registered {what} (session {}): {}",
            c.session_id(),
            short(&path)
        );
        if let Some(f) = first.take() {
            let _ = f.send(Ok(()));
        }
        backoff.reset();
        last_warn = None;
        current = Some(c.clone());
        // Guard it: an exists watch, re-armed after every event. Across a reconnection
        // the client sets it again and the server tells what happened meanwhile.
        let why = loop {
            let checked = tokio::select! {
                r = c.check_and_watch_stat(&path) => r,
                _ = stop.changed() => break 'outer,
            };
            match checked {
                Ok((Some(stat), w)) if stat.ephemeral_owner == c.session_id().0 => {
                    let ev = tokio::select! {
                        ev = w.changed() => ev,
                        _ = stop.changed() => break 'outer,
                    };
                    match ev.event_type {
                        zk::EventType::NodeDeleted => break "was deleted",
                        zk::EventType::Session if ev.session_state.is_terminated() => {
                            break "lost its session"
                        }
                        _ => {}
                    }
                }
                Ok((Some(_), _)) => {
                    // Replaced by another session's node of the same name: take it back,
                    // but not at full speed should someone keep doing so.
                    if !back_off(&mut backoff, &mut stop).await {
                        break 'outer;
                    }
                    break "was taken over by another session";
                }
                Ok((None, _)) => break "was deleted",
                Err(_) if c.state().is_terminated() => break "lost its session",
                Err(e) => {
                    log::debug!("zookeeper: checking {what}: {e}");
                    if !back_off(&mut backoff, &mut stop).await {
                        break 'outer;
                    }
                }
            }
        };
        log::warn!("zookeeper: the node of {what} {why}; creating it again");
    }
    if let Some(c) = current.filter(|c| !c.state().is_terminated()) {
        match tokio::time::timeout(REMOVE_TIMEOUT, c.delete(&path, None)).await {
            Ok(Ok(())) | Ok(Err(zk::Error::NoNode)) => {
                log::info!("zookeeper: deregistered {what}")
            }
            Ok(Err(e)) => log::warn!("zookeeper: deleting the node of {what}: {e}"),
            Err(_) => log::warn!(
                "zookeeper: deleting the node of {what} timed out (it goes with the session)"
            ),
        }
    }
    drop(user);
}

/// The local address consumers register: that of a UDP socket "connected" to the first
/// server (nothing is sent), else `127.0.0.1`.
async fn local_host(server: &str) -> String {
    let found = async {
        let addr = tokio::net::lookup_host(server).await.ok()?.next()?;
        let bind = if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let sock = std::net::UdpSocket::bind(bind).ok()?;
        sock.connect(addr).ok()?;
        Some(sock.local_addr().ok()?.ip())
    };
    match found.await {
        Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        Some(ip) => ip.to_string(),
        None => "127.0.0.1".to_owned(),
    }
}

/// The consumer node of a watch of `service`, kept while the watch lives.
async fn keep_consumer(hub: Arc<Hub>, root: String, service: String, stop: watch::Receiver<()>) {
    let host = local_host(&hub.first_server).await;
    let url = dubbo_url::consumer_url(&host, &service, now_ms(), std::process::id());
    let path = format!(
        "{root}/{service}/consumers/{}",
        dubbo_url::form_encode(&url)
    );
    keep_node(hub, path, format!("consumer of {service}"), stop, None).await;
}

/// Decodes the children of a providers node: the instances, sorted by address and one per
/// address (the most recently registered). Bad entries are skipped, logged and counted
/// once each while they stay (`bad` holds their names).
fn decode_children(
    dir: &str,
    service: &str,
    children: &[String],
    bad: &mut HashSet<String>,
    skipped: &AtomicU64,
) -> Vec<Instance> {
    // Per address: the most recent node's instance, and the variants of all its nodes
    // (Dubbo registers one node per version and group of a service).
    let mut by_addr: BTreeMap<String, (u64, Instance, Vec<Variant>)> = BTreeMap::new();
    let mut still_bad = HashSet::new();
    for name in children {
        match dubbo_url::decode_provider(name, service) {
            Ok(Decoded::Provider(inst, ts)) => {
                let variants = inst.variants();
                match by_addr.get_mut(&inst.addr) {
                    Some((t, kept, all)) => {
                        for v in variants {
                            if !all.contains(&v) {
                                all.push(v);
                            }
                        }
                        if *t <= ts {
                            (*t, *kept) = (ts, inst);
                        }
                    }
                    None => {
                        by_addr.insert(inst.addr.clone(), (ts, inst, variants));
                    }
                }
            }
            Ok(Decoded::Disabled) => log::debug!("zookeeper: {dir}/{}: disabled", short(name)),
            Err(why) => {
                if !bad.contains(name) {
                    skipped.fetch_add(1, Ordering::Relaxed);
                    log::warn!("zookeeper: skipping {dir}/{}: {why}", short(name));
                }
                still_bad.insert(name.clone());
            }
        }
    }
    *bad = still_bad;
    by_addr
        .into_values()
        .map(|(_, mut inst, variants)| {
            if variants.len() > 1 {
                for key in ["version", "group", crate::variant::VARIANTS_META] {
                    inst.meta.remove(key);
                }
                inst = inst.with_variants(&variants);
            }
            inst
        })
        .collect()
}

/// Why a watcher stopped waiting.
enum Woken {
    /// Read again.
    Reread,
    /// The session ended: get a new one.
    SessionEnded,
}

/// Reads `path` with `read` (which sets a watch); `path` missing means `None`, with a
/// watch for its creation.
async fn read_or_watch_creation<T, F, Fut>(
    c: &zk::Client,
    path: &str,
    read: F,
) -> Result<(Option<T>, zk::OneshotWatcher), zk::Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(T, zk::OneshotWatcher), zk::Error>>,
{
    loop {
        match read().await {
            Ok((v, w)) => return Ok((Some(v), w)),
            Err(zk::Error::NoNode) => match c.check_and_watch_stat(path).await? {
                (None, w) => return Ok((None, w)),
                (Some(_), _) => continue, // created meanwhile
            },
            Err(e) => return Err(e),
        }
    }
}

/// What a watch follows in ZooKeeper, and what it makes of it: the children of a
/// service's providers node ([`Providers`]) or the data of its rules node
/// ([`RulesNode`]). [`watch_loop`] does the rest, the same for both.
trait Watched: Send {
    /// The node watched, for log lines.
    fn path(&self) -> &str;
    /// Whether the watch was dropped.
    fn is_stopped(&self) -> bool;
    /// Reads the node, setting a watch on it (or on its creation), and delivers what it
    /// read if that is not what was delivered last; returns the watch.
    fn read(
        &mut self,
        c: &zk::Client,
    ) -> impl Future<Output = Result<zk::OneshotWatcher, zk::Error>> + Send;
    /// What the watch keeps while ZooKeeper is unreachable, for a warning (`None`:
    /// nothing delivered yet).
    fn kept(&self) -> Option<String>;
}

/// The providers of a service: the children of `<root>/<service>/providers`.
struct Providers {
    service: String,
    dir: String,
    /// Names of the children skipped (and counted) while they stay.
    bad: HashSet<String>,
    skipped: Arc<AtomicU64>,
    delivered: Option<Vec<Instance>>,
    sink: Arc<Sink>,
}

impl Watched for Providers {
    fn path(&self) -> &str {
        &self.dir
    }

    fn is_stopped(&self) -> bool {
        self.sink.is_stopped()
    }

    async fn read(&mut self, c: &zk::Client) -> Result<zk::OneshotWatcher, zk::Error> {
        let dir = self.dir.as_str();
        let (children, w) =
            read_or_watch_creation(c, dir, || c.list_and_watch_children(dir)).await?;
        let children = children.unwrap_or_default();
        let list = decode_children(dir, &self.service, &children, &mut self.bad, &self.skipped);
        if self.delivered.as_ref() != Some(&list) {
            self.delivered = Some(list.clone());
            self.sink.deliver(list);
        }
        Ok(w)
    }

    fn kept(&self) -> Option<String> {
        let list = self.delivered.as_ref()?;
        Some(format!("the last list of {} instance(s)", list.len()))
    }
}

/// The rules document of a service: the data of `<root>/<service>/mesh-rules`.
struct RulesNode {
    path: String,
    tracker: rules::Tracker,
}

impl Watched for RulesNode {
    fn path(&self) -> &str {
        &self.path
    }

    fn is_stopped(&self) -> bool {
        self.tracker.is_stopped()
    }

    async fn read(&mut self, c: &zk::Client) -> Result<zk::OneshotWatcher, zk::Error> {
        let path = self.path.as_str();
        let get = || async move {
            let (data, stat, w) = c.get_and_watch_data(path).await?;
            Ok(((data, stat), w))
        };
        let (found, w) = read_or_watch_creation(c, path, get).await?;
        match found {
            Some((data, stat)) => self.tracker.note(Found::Doc {
                bytes: &data,
                // A zxid is never negative.
                version: u64::try_from(stat.mzxid).unwrap_or(0),
            }),
            None => self.tracker.note(Found::Absent),
        }
        self.tracker.deliver();
        Ok(w)
    }

    fn kept(&self) -> Option<String> {
        self.tracker.kept()
    }
}

/// Tracks how long a watcher's state may have been stale, and warns about it.
struct Staleness {
    path: String,
    since: Option<Instant>,
    warned: Option<Instant>,
}

impl Staleness {
    fn note(&mut self, why: &str, kept: Option<String>) {
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);
        if warn_due(&self.warned, now) {
            self.warned = Some(now);
            match kept {
                Some(kept) => log::warn!(
                    "zookeeper unreachable for {} ({why}); keeping {kept}, which may be \
                     stale (for {:.1}s)",
                    self.path,
                    now.duration_since(since).as_secs_f64()
                ),
                None => log::warn!(
                    "zookeeper unreachable for {} ({why}); nothing delivered yet",
                    self.path
                ),
            }
        }
    }

    fn live(&mut self) {
        if let Some(since) = self.since.take() {
            log::info!(
                "zookeeper: watch of {} is live again after {:.1}s",
                self.path,
                since.elapsed().as_secs_f64()
            );
        }
        self.warned = None;
    }
}

/// Follows `watched` until the watch is dropped: reads it with a watch, and again after
/// every event of that watch and every reconnection (at most once per
/// [`DELIVER_EVERY`]), in a new session after the session ended; while ZooKeeper is
/// unreachable it retries with backoff, keeps what it delivered, and warns.
async fn watch_loop<W: Watched>(hub: Arc<Hub>, mut watched: W, mut stop: watch::Receiver<()>) {
    let _user = hub.user();
    let mut backoff = backoff();
    let mut stale = Staleness {
        path: watched.path().to_owned(),
        since: None,
        warned: None,
    };
    let mut read_at = tokio::time::Instant::now() - DELIVER_EVERY;
    'session: loop {
        if watched.is_stopped() {
            return;
        }
        let c = tokio::select! {
            r = hub.client() => r,
            _ = stop.changed() => return,
        };
        let c = match c {
            Ok(c) => c,
            Err(e) => {
                stale.note(&e, watched.kept());
                if !back_off(&mut backoff, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        let mut states = c.state_watcher();
        loop {
            // At most one read per DELIVER_EVERY: what changes meanwhile is in the next.
            tokio::select! {
                _ = tokio::time::sleep_until(read_at + DELIVER_EVERY) => {}
                _ = stop.changed() => return,
            }
            let read = tokio::select! {
                r = watched.read(&c) => r,
                _ = stop.changed() => return,
            };
            read_at = tokio::time::Instant::now();
            let w = match read {
                Ok(w) => {
                    stale.live();
                    backoff.reset();
                    w
                }
                Err(e) => {
                    stale.note(&e.to_string(), watched.kept());
                    if c.state().is_terminated() {
                        continue 'session;
                    }
                    if !back_off(&mut backoff, &mut stop).await {
                        return;
                    }
                    continue;
                }
            };
            let changed = w.changed();
            tokio::pin!(changed);
            let woken = loop {
                let mut warn_again = std::pin::pin!(tokio::time::sleep(STALE_WARN_EVERY));
                tokio::select! {
                    ev = &mut changed => break match ev.event_type {
                        zk::EventType::Session if ev.session_state.is_terminated() => {
                            Woken::SessionEnded
                        }
                        _ => Woken::Reread,
                    },
                    state = states.changed() => match state {
                        zk::SessionState::Disconnected => {
                            stale.note("disconnected", watched.kept());
                        }
                        s if s.is_terminated() => break Woken::SessionEnded,
                        // Reconnected: the watch is set again by the client, but read
                        // anyway (cheap, and certain).
                        _ if stale.since.is_some() => break Woken::Reread,
                        _ => {}
                    },
                    _ = &mut warn_again, if stale.since.is_some() => {
                        stale.note("still disconnected", watched.kept());
                    }
                    _ = stop.changed() => return,
                }
            };
            if let Woken::SessionEnded = woken {
                stale.note("session ended", watched.kept());
                continue 'session;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_are_decoded_deduplicated_and_bad_ones_counted_once() {
        let svc = "com.foo.Hello";
        let enc = |s: &str| dubbo_url::form_encode(s);
        let children = vec![
            enc("dubbomesh://10.0.0.1:30000/com.foo.Hello?timestamp=5&weight=7"),
            enc("dubbomesh://10.0.0.1:30000/com.foo.Hello?timestamp=9&weight=8"),
            enc("dubbo://10.0.0.2:20880/com.foo.Hello"),
            enc("rest://10.0.0.3:80/com.foo.Hello"),
            enc("dubbo://10.0.0.4:20880/com.foo.Hello?enabled=false"),
        ];
        let (mut bad, skipped) = (HashSet::new(), AtomicU64::new(0));
        let list = decode_children("/d", svc, &children, &mut bad, &skipped);
        let addrs: Vec<&str> = list.iter().map(|i| i.addr.as_str()).collect();
        assert_eq!(addrs, ["10.0.0.1:30000", "10.0.0.2:20880"]);
        assert_eq!(list[0].weight, 8, "the newest of two for one address");
        assert_eq!(skipped.load(Ordering::Relaxed), 1);
        decode_children("/d", svc, &children, &mut bad, &skipped);
        assert_eq!(
            skipped.load(Ordering::Relaxed),
            1,
            "counted once while it stays"
        );
        decode_children("/d", svc, &children[..2], &mut bad, &skipped);
        assert!(bad.is_empty());
        decode_children("/d", svc, &children, &mut bad, &skipped);
        assert_eq!(
            skipped.load(Ordering::Relaxed),
            2,
            "counted again once back"
        );
    }

    #[test]
    fn short_names() {
        assert_eq!(short("abc"), "abc");
        let long = "é".repeat(200);
        assert!(short(&long).ends_with("...(400 bytes)"));
    }
}
