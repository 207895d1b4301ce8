//! Service registry for dubbo-mesh.
//!
//! Provider-agents [`register`](Registry::register) an [`Instance`]; the consumer-agent
//! [`watch`](Registry::watch)es a service and receives the **whole** current instance list
//! every time it changes (and once at start, even if empty).
//!
//! Traffic rules live where the membership lives: each service may have one rules
//! document (UTF-8 text, JSON in practice, at most [`MAX_RULES_BYTES`]), stored with
//! [`put_rules`](Registry::put_rules) and followed with
//! [`watch_rules`](Registry::watch_rules), which delivers it (or `None`) at start and on
//! every change. The registry does not parse it: the consumer-agent does.
//!
//! One interface, four backends, chosen by URL in [`open`]:
//!
//! | URL | backend | rules of a service |
//! | --- | --- | --- |
//! | `etcd://h1:2379,h2:2379[?ttl=N]` | etcd v3, keys `/dubbomesh/<service>/<host>:<port>`, leases with TTL `N` s (default 10) | the value of the key `/dubbomesh-rules/<service>` (no lease) |
//! | `zookeeper://h1:2181,h2:2181[/root][?session_timeout_ms=N]` | ZooKeeper (3.5+) in Apache Dubbo's layout: ephemeral `<root>/<service>/providers/<encoded Dubbo URL>`; root `/dubbo` by default, session timeout `N` ms (default 10 000) | the data of the persistent node `<root>/<service>/mesh-rules` |
//! | `file:///some/dir` | embedded file registry in that directory (one host) | the file `<dir>/<service>/mesh-rules` |
//! | `static://host:port?weight=N,host:port?weight=M` | fixed list (consumer side only): every watch gets it once | none (a rules watch gets `None` once) |
//! | `None` (or `""`) | embedded file registry in `<temp_dir>/dubbo-mesh-registry` | as `file://` |
//!
//! Callbacks run on the registry's own thread (never on the caller's event loop); they
//! must be quick: forward the list to your loop through a channel or a waker.
//!
//! # Behaviour
//!
//! * **etcd**: each [`Registry`] has one small tokio runtime on a dedicated thread. A
//!   registration puts `/dubbomesh/<service>/<host>:<port>` = `{"weight":N,"meta":{..}}` on a
//!   lease (TTL default 10 s, `?ttl=N` or [`Builder::ttl`]) kept alive every TTL/3; after a
//!   lost lease or a broken connection it registers again (new lease, same key, the old lease
//!   revoked), with backoff (100 ms doubling to 2 s) while etcd is down. Dropping or
//!   [`deregister`](Registration::deregister)ing revokes the lease (bounded by ~1 s). A watch
//!   reads the prefix once, then follows a watch stream; after a broken stream it resumes
//!   from the last revision seen, or reads everything again if that revision was compacted.
//!   While etcd is unreachable the watcher keeps (and does not re-deliver) its last list and
//!   logs a warning that it is stale; a watch that never reached etcd delivers nothing until
//!   it does. Empty (race-style) values mean the default weight. A service's rules document
//!   is the value of `/dubbomesh-rules/<service>` (outside the `/dubbomesh/` prefix, so no
//!   instance watch sees it), put without a lease; a rules watch reads that key, then
//!   follows it exactly as an instance watch follows its prefix (resuming, full read after
//!   a compaction, backoff, the last document kept while etcd is unreachable).
//! * **zookeeper**: Apache Dubbo's own registry layout, so that Dubbo's Java, Go and Node
//!   clients and its ops tools (Dubbo Admin, zkCli) see the mesh's providers and the mesh
//!   sees theirs. A registration is the ephemeral node
//!   `<root>/<service>/providers/<URL.encode(provider URL)>`, empty, with persistent
//!   parents created when missing. The provider URL is
//!   `dubbo://<dubbo.addr>/<service>?anyhost=true&interface=<service>&mesh.agent=<addr>&side=provider&timestamp=<ms>&weight=<weight>`
//!   when the instance's meta has a `dubbo.addr` (the provider-agent's Dubbo listener: plain
//!   Dubbo consumers call it, meshed ones the agent), else `dubbomesh://<addr>/...`; every
//!   other meta entry (`version`, `group`, `methods`, ...) is a parameter too, parameters
//!   sorted as Dubbo writes them. More servers may also be given Dubbo's way
//!   (`?backup=h2:2181,h3:2181`), and a host without a port means 2181. Each [`Registry`]
//!   has one small tokio runtime on a dedicated
//!   thread and one session (timeout 10 s, `?session_timeout_ms=N`, which the server bounds
//!   by its `minSessionTimeout`/`maxSessionTimeout`), opened when first needed and closed
//!   when its last registration and watch are gone. A registration is created again after
//!   its session expired (in a new session; a node of the same name left by the old one is
//!   replaced, as Dubbo does), and after someone deleted it (an exists watch guards it);
//!   while ZooKeeper is unreachable it retries with backoff (100 ms doubling to 2 s) and logs
//!   a warning. [`register`](Registry::register) waits up to 5 s for the first create, then
//!   goes on in the background. Dropping or [`deregister`](Registration::deregister)ing
//!   deletes the node (bounded by ~1 s). A watch reads the children of
//!   `<root>/<service>/providers` with a watch, re-armed after every event and every
//!   reconnection (at most one read per 50 ms), and delivers them decoded: `dubbo://` with a
//!   `mesh.agent` parameter is the agent at that address (meta `protocol=agent` and
//!   `dubbo.addr`), `dubbo://` without is a plain Dubbo provider (meta `protocol=dubbo`),
//!   `dubbomesh://` an agent; `weight` is the weight (default 100, as Dubbo's) and every other
//!   parameter a meta entry; `enabled=false` or `disabled=true` providers are left out, and of
//!   two nodes for one address the newest (`timestamp`) is kept. Malformed entries (bad
//!   encoding, another protocol, no host, port 0 or over 65535, another interface, a name
//!   over 16 KiB, a bad weight, over 64 parameters, a name over 64 or a value over 4 KiB)
//!   are skipped, logged once and counted in [`Registry::skipped_entries`]; node data is
//!   never read. While it lives, a watch also keeps the consumer node
//!   `<root>/<service>/consumers/<URL.encode(consumer://<local ip>/<service>?...)>`. While
//!   ZooKeeper is unreachable the watcher keeps (and does not re-deliver) its last list and
//!   logs a warning that it may be stale; a watch that never reached ZooKeeper delivers
//!   nothing until it does. A service's rules document is the data of the persistent node
//!   `<root>/<service>/mesh-rules` (created with its parents by
//!   [`put_rules`](Registry::put_rules), in the registry's session or one opened for the
//!   while; Dubbo's clients and tools pass over this child they do not know). A rules watch
//!   reads the node's data with a data watch (or, while it is missing, an exists watch),
//!   re-armed after every event, every reconnection and in a new session after one
//!   expired; it keeps the last good document while ZooKeeper is unreachable. It keeps no
//!   consumer node.
//! * **file**: one JSON file per instance, written atomically (temp + rename) and refreshed
//!   every second; watchers poll every 50 ms and drop (and delete) entries whose process is
//!   gone (`/proc/<pid>`) or whose heartbeat is older than 3 s. Deregistering deletes the file.
//!   The directory must be private to the user (created 0700; a symbolic link, another
//!   user's directory or a group- or world-writable one is refused with
//!   [`Error::Insecure`]), and only regular files of at most 64 KiB are read as entries,
//!   links not followed; other files are skipped and logged once. A service's rules
//!   document is the file `<dir>/<service>/mesh-rules` (not `*.json`, so never taken for
//!   an entry), written atomically (temp + rename, mode 0600) by
//!   [`put_rules`](Registry::put_rules); a rules watch polls it every 50 ms too, reading it
//!   again only when its inode, size or times changed, under the same checks (private
//!   directories, a regular file, links not followed, at most [`MAX_RULES_BYTES`]).
//! * **static**: every watch gets the list once, for whatever service; `register` fails with
//!   [`Error::Unsupported`]. There are no rules: a rules watch gets `None` once, and
//!   [`put_rules`](Registry::put_rules) fails with [`Error::Unsupported`].
//!
//! With every backend a rules watch delivers only changes (never the same text twice in
//! a row), batched as the instance lists are (at most one delivery per 50 ms). A document
//! found over [`MAX_RULES_BYTES`] or not UTF-8 is not delivered: it is logged once, counted
//! in [`Registry::skipped_entries`], and the last good one stands.
//!
//! # Cargo features
//!
//! * **`etcd`** (default): the etcd backend, which brings in `etcd-client` (its build needs
//!   `protoc`) and tokio. Without it [`open`] refuses an `etcd://` URL with
//!   [`Error::Unsupported`], saying so.
//! * **`zookeeper`** (default): the ZooKeeper backend, which brings in `zookeeper-client`
//!   and tokio. Without it [`open`] refuses a `zookeeper://` URL with
//!   [`Error::Unsupported`], saying so. Without both, the crate has only the file and
//!   static backends.
//!
//! ```
//! use std::sync::mpsc;
//! use std::time::Duration;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let url = format!("file://{}", dir.path().display());
//! let registry = registry::open(Some(&url)).unwrap();
//!
//! // provider side
//! let reg = registry
//!     .register(registry::Instance::new("com.example.Hello", "127.0.0.1:30000").with_weight(200))
//!     .unwrap();
//!
//! // consumer side
//! let (tx, rx) = mpsc::channel();
//! let watch = registry
//!     .watch("com.example.Hello", move |list| {
//!         let _ = tx.send(list);
//!     })
//!     .unwrap();
//! let list = rx.recv_timeout(Duration::from_secs(2)).unwrap();
//! assert_eq!(list.len(), 1);
//! assert_eq!(list[0].weight, 200);
//!
//! reg.deregister().unwrap(); // graceful: the entry is gone when this returns
//! drop(watch);
//! ```

#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod dir_events;
#[cfg(feature = "zookeeper")]
mod dubbo_url;
#[cfg(feature = "etcd")]
mod etcd;
mod file;
mod rules;
mod url;
pub mod variant;
#[cfg(feature = "zookeeper")]
mod zookeeper;

pub use crate::url::{DEFAULT_SESSION_TIMEOUT, DEFAULT_TTL, DEFAULT_ZOOKEEPER_ROOT};
pub use crate::variant::Variant;

/// Weight of an instance whose registration does not say otherwise.
pub const DEFAULT_WEIGHT: u32 = 100;

/// Largest traffic rules document (bytes) [`Registry::put_rules`] stores and a rules watch
/// delivers: 256 KiB.
pub const MAX_RULES_BYTES: usize = 256 * 1024;

/// One registered instance of a service: an agent reachable at `addr`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Instance {
    /// Service (Dubbo interface) name, e.g. `com.alibaba.dubbo.performance.demo.provider.IHelloService`.
    pub service: String,
    /// `host:port` reaching the agent.
    pub addr: String,
    /// Load-balancing weight (default [`DEFAULT_WEIGHT`]).
    pub weight: u32,
    /// Free-form metadata, e.g. `version`, `group` (see [`variant`]), `serialization`.
    pub meta: BTreeMap<String, String>,
}

impl Instance {
    /// An instance with the default weight and no metadata.
    pub fn new(service: impl Into<String>, addr: impl Into<String>) -> Self {
        Instance {
            service: service.into(),
            addr: addr.into(),
            weight: DEFAULT_WEIGHT,
            meta: BTreeMap::new(),
        }
    }

    /// Sets the weight.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Adds one metadata entry.
    pub fn with_meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta.insert(key.into(), value.into());
        self
    }
}

/// Errors of this crate.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The registry URL could not be understood.
    InvalidUrl(String),
    /// The service name or instance is not acceptable (empty, contains `/`, bad `host:port`...).
    InvalidInstance(String),
    /// A traffic rules document [`Registry::put_rules`] refuses to store: larger than
    /// [`MAX_RULES_BYTES`].
    InvalidRules(String),
    /// The operation does not exist for this backend (e.g. `register` on a static list), or
    /// the backend is not in this build (an `etcd://` URL without the `etcd` feature, a
    /// `zookeeper://` one without the `zookeeper` feature).
    Unsupported(&'static str),
    /// A filesystem error of the file backend.
    Io(std::io::Error),
    /// The file registry's directory (or a service directory in it) is not private to this
    /// user: a symbolic link, owned by another user, or writable by group or others. The
    /// message names the path, what is wrong and what to do.
    Insecure(String),
    /// An error talking to etcd. Never returned by a build without the `etcd` feature.
    Etcd(String),
    /// An error of the ZooKeeper backend. Never returned by a build without the
    /// `zookeeper` feature.
    ZooKeeper(String),
    /// The registry's background thread is gone.
    Shutdown,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidUrl(m) => write!(f, "invalid registry URL: {m}"),
            Error::InvalidInstance(m) => write!(f, "invalid instance: {m}"),
            Error::InvalidRules(m) => write!(f, "invalid rules document: {m}"),
            Error::Unsupported(m) => write!(f, "unsupported: {m}"),
            Error::Io(e) => write!(f, "registry I/O error: {e}"),
            Error::Insecure(m) => write!(f, "{m}"),
            Error::Etcd(m) => write!(f, "etcd error: {m}"),
            Error::ZooKeeper(m) => write!(f, "zookeeper error: {m}"),
            Error::Shutdown => write!(f, "registry background thread has stopped"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

// `Registry`, `Registration`, `Watch` and `Error` cross threads freely.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Registry>();
    send_sync::<Registration>();
    send_sync::<Watch>();
    send_sync::<Error>();
};

/// Callback type of [`Registry::watch`] (`T` = the instance list) and of
/// [`Registry::watch_rules`] (`T` = the rules document), boxed.
pub(crate) type Callback<T> = Box<dyn FnMut(T) + Send + 'static>;

/// A callback that is no longer invoked once its [`Watch`] has been dropped; it gets the
/// instance lists (of [`Registry::watch`]) by default, or rules documents ([`RulesSink`]).
pub(crate) struct Sink<T = Vec<Instance>> {
    stopped: Arc<AtomicBool>,
    callback: Mutex<Callback<T>>,
}

/// The [`Sink`] of a [`Registry::watch_rules`].
pub(crate) type RulesSink = Sink<Option<String>>;

impl<T> Sink<T> {
    pub(crate) fn new(callback: Callback<T>) -> (Arc<Sink<T>>, Arc<AtomicBool>) {
        let stopped = Arc::new(AtomicBool::new(false));
        let sink = Arc::new(Sink {
            stopped: stopped.clone(),
            callback: Mutex::new(callback),
        });
        (sink, stopped)
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Delivers `list` unless stopped. A panicking callback is caught and logged.
    pub(crate) fn deliver(&self, list: T) {
        if self.is_stopped() {
            return;
        }
        let mut cb = match self.callback.lock() {
            Ok(cb) => cb,
            Err(p) => p.into_inner(),
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (cb)(list)));
        if r.is_err() {
            log::error!("registry watch callback panicked");
        }
    }
}

/// How to open a registry; [`open`] is `Builder::new(url).build()`.
#[derive(Debug, Clone, Default)]
pub struct Builder {
    url: Option<String>,
    ttl: Option<Duration>,
}

impl Builder {
    /// A builder for `url` (see the crate docs); `None` means the embedded default.
    pub fn new(url: Option<&str>) -> Self {
        Builder {
            url: url.map(str::to_owned),
            ttl: None,
        }
    }

    /// Lease TTL of the etcd backend (whole seconds, at least 1). A `?ttl=N` in the URL wins;
    /// the other backends ignore it.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Opens the registry. Never connects synchronously: an unreachable etcd is retried in
    /// the background.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for a URL that cannot be understood. For the file registry,
    /// [`Error::Insecure`] if its directory is a symbolic link, owned by another user, or
    /// writable by group or others, and [`Error::Io`] if it cannot be created (it is
    /// created with mode 0700 when missing).
    pub fn build(self) -> Result<Registry, Error> {
        let parsed = url::parse(self.url.as_deref())?;
        let skipped = Arc::new(AtomicU64::new(0));
        let backend = match parsed {
            #[cfg(feature = "etcd")]
            url::Parsed::Etcd { endpoints, ttl } => {
                let ttl = ttl.or(self.ttl).unwrap_or(DEFAULT_TTL);
                Backend::Etcd(etcd::EtcdBackend::new(endpoints, ttl)?)
            }
            #[cfg(not(feature = "etcd"))]
            url::Parsed::Etcd { .. } => return Err(Error::Unsupported(NO_ETCD)),
            #[cfg(feature = "zookeeper")]
            url::Parsed::ZooKeeper {
                servers,
                root,
                session_timeout,
            } => Backend::ZooKeeper(zookeeper::ZkBackend::new(
                servers,
                root,
                session_timeout,
                skipped.clone(),
            )?),
            #[cfg(not(feature = "zookeeper"))]
            url::Parsed::ZooKeeper { .. } => return Err(Error::Unsupported(NO_ZOOKEEPER)),
            url::Parsed::File(dir) => Backend::File(file::FileBackend::new(dir)?),
            url::Parsed::Static(list) => Backend::Static(list),
        };
        Ok(Registry {
            backend: Arc::new(backend),
            skipped,
        })
    }
}

/// Why an `etcd://` URL is refused by a build without the `etcd` feature.
#[cfg(not(feature = "etcd"))]
const NO_ETCD: &str = "this build of the registry has no etcd support, so etcd:// URLs \
     cannot be opened; rebuild the `registry` crate with its `etcd` feature (on by default)";

/// Why a `zookeeper://` URL is refused by a build without the `zookeeper` feature.
#[cfg(not(feature = "zookeeper"))]
const NO_ZOOKEEPER: &str = "this build of the registry has no ZooKeeper support, so \
     zookeeper:// URLs cannot be opened; rebuild the `registry` crate with its `zookeeper` \
     feature (on by default)";

/// Opens a registry from a URL (see the crate docs); `None` is the embedded file registry.
pub fn open(url: Option<&str>) -> Result<Registry, Error> {
    Builder::new(url).build()
}

#[derive(Debug)]
enum Backend {
    #[cfg(feature = "etcd")]
    Etcd(etcd::EtcdBackend),
    #[cfg(feature = "zookeeper")]
    ZooKeeper(zookeeper::ZkBackend),
    File(file::FileBackend),
    Static(Vec<url::StaticEntry>),
}

/// A registry handle. Cheap to clone, `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Registry {
    backend: Arc<Backend>,
    /// [`Registry::skipped_entries`], shared by the clones and the watches.
    skipped: Arc<AtomicU64>,
}

impl Registry {
    /// Registers `instance` and keeps it registered (lease keep-alive or heartbeat) until the
    /// returned [`Registration`] is dropped or [`deregister`](Registration::deregister)ed.
    ///
    /// With etcd this waits (up to a few seconds) for the first successful put, with
    /// ZooKeeper for the first create (up to 5 s); if the server is unreachable it logs a
    /// warning and keeps trying in the background.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInstance`] for a bad service name or address; with ZooKeeper also
    /// for meta that would not make a Dubbo URL that its decoder accepts (a bad
    /// `dubbo.addr`, over 64 entries, a key over 64 bytes, a value over 4 KiB, a control
    /// character).
    pub fn register(&self, instance: Instance) -> Result<Registration, Error> {
        validate_service(&instance.service)?;
        url::validate_addr(&instance.addr).map_err(Error::InvalidInstance)?;
        let inner = match &*self.backend {
            #[cfg(feature = "etcd")]
            Backend::Etcd(b) => RegInner::Etcd(b.register(instance)?),
            #[cfg(feature = "zookeeper")]
            Backend::ZooKeeper(b) => RegInner::ZooKeeper(b.register(instance)?),
            Backend::File(b) => RegInner::File(b.register(instance)?),
            Backend::Static(_) => {
                return Err(Error::Unsupported(
                    "a static:// registry is consumer-side only; it cannot register",
                ))
            }
        };
        Ok(Registration { inner: Some(inner) })
    }

    /// Watches `service`: `callback` gets the whole current list (sorted by `addr`) once at
    /// start, even if empty, and again every time it changes. It runs on the registry's own
    /// thread and must not block. Dropping the returned [`Watch`] stops it.
    pub fn watch<F>(&self, service: &str, callback: F) -> Result<Watch, Error>
    where
        F: FnMut(Vec<Instance>) + Send + 'static,
    {
        validate_service(service)?;
        let (sink, stopped) = Sink::new(Box::new(callback));
        let guard: Option<Box<dyn Send + Sync>> = match &*self.backend {
            #[cfg(feature = "etcd")]
            Backend::Etcd(b) => Some(Box::new(b.watch(service, sink)?)),
            #[cfg(feature = "zookeeper")]
            Backend::ZooKeeper(b) => Some(Box::new(b.watch(service, sink)?)),
            Backend::File(b) => {
                b.watch(service, sink)?;
                None
            }
            Backend::Static(list) => {
                let mut list: Vec<Instance> = list.iter().map(|e| e.instance(service)).collect();
                list.sort_by(|a, b| a.addr.cmp(&b.addr));
                std::thread::Builder::new()
                    .name("registry-static".into())
                    .spawn(move || sink.deliver(list))?;
                None
            }
        };
        Ok(Watch {
            stopped,
            _guard: guard,
        })
    }

    /// Watches the traffic rules of `service`: `callback` gets the document (`Some(text)`),
    /// or `None` when the service has none, once at start and again every time it changes
    /// (never the same text twice in a row; changes are batched as the instance lists'
    /// are). The document is opaque here (JSON in practice: the consumer-agent parses and
    /// validates it). One larger than [`MAX_RULES_BYTES`] or not UTF-8 is not delivered:
    /// it is logged once and counted in [`skipped_entries`](Registry::skipped_entries),
    /// and what was delivered before stands (at start: `None`). While the backend is
    /// unreachable the watch keeps (and does not re-deliver) the last document; one that
    /// never reached it delivers nothing until it does. Where each backend keeps the
    /// rules: see the crate docs. The callback runs on the registry's own thread and must
    /// be quick. Dropping the returned [`Watch`] stops it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInstance`] for a bad service name.
    pub fn watch_rules<F>(&self, service: &str, callback: F) -> Result<Watch, Error>
    where
        F: FnMut(Option<String>) + Send + 'static,
    {
        validate_service(service)?;
        let (sink, stopped) = RulesSink::new(Box::new(callback));
        let skipped = self.skipped.clone();
        let guard: Option<Box<dyn Send + Sync>> = match &*self.backend {
            #[cfg(feature = "etcd")]
            Backend::Etcd(b) => Some(Box::new(b.watch_rules(service, sink, skipped)?)),
            #[cfg(feature = "zookeeper")]
            Backend::ZooKeeper(b) => Some(Box::new(b.watch_rules(service, sink)?)),
            Backend::File(b) => {
                b.watch_rules(service, sink, skipped)?;
                None
            }
            Backend::Static(_) => {
                std::thread::Builder::new()
                    .name("registry-static".into())
                    .spawn(move || sink.deliver(None))?;
                None
            }
        };
        Ok(Watch {
            stopped,
            _guard: guard,
        })
    }

    /// Stores (`Some`) or deletes (`None`) the traffic rules document of `service`, for
    /// operators' tools, the bench and tests. It is persistent: not tied to this registry's
    /// lease, session or process. Returns once the backend has it (etcd, ZooKeeper: bounded
    /// by a few seconds; file: written, atomically). Deleting a document that does not
    /// exist is fine.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInstance`] for a bad service name, [`Error::InvalidRules`] for a
    /// document over [`MAX_RULES_BYTES`], [`Error::Unsupported`] for a static list, and the
    /// backend's error ([`Error::Etcd`], [`Error::ZooKeeper`], [`Error::Io`],
    /// [`Error::Insecure`]) when it could not be stored; with etcd and ZooKeeper also when
    /// called from a watch callback (on the registry's own thread, which it would block).
    pub fn put_rules(&self, service: &str, rules: Option<&str>) -> Result<(), Error> {
        validate_service(service)?;
        if let Some(doc) = rules {
            rules::check_put(doc)?;
        }
        match &*self.backend {
            #[cfg(feature = "etcd")]
            Backend::Etcd(b) => b.put_rules(service, rules),
            #[cfg(feature = "zookeeper")]
            Backend::ZooKeeper(b) => b.put_rules(service, rules),
            Backend::File(b) => b.put_rules(service, rules),
            Backend::Static(_) => Err(Error::Unsupported(
                "a static:// registry has no traffic rules; keep them in etcd, ZooKeeper or \
                 the file registry",
            )),
        }
    }

    /// How many malformed entries this registry's watches have skipped (logging each
    /// once). With ZooKeeper, provider nodes whose name is not a Dubbo URL the mesh can
    /// use (bad encoding, another protocol, no host, a bad port, another interface, a name
    /// over 16 KiB, a bad weight or parameters beyond the bounds), each counted once per
    /// watch while it stays (again if it goes and comes back). With every backend but
    /// static, traffic rules documents a rules watch did not deliver (over
    /// [`MAX_RULES_BYTES`], not UTF-8, with the file registry also not a regular file),
    /// each version counted once per watch. Monotonic, for a metrics counter; shared by
    /// the clones of this handle.
    pub fn skipped_entries(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

/// Whether `service` is a name every backend can store (a file name, an etcd key part).
///
/// # Errors
/// [`Error::InvalidInstance`] for an empty name, one with `/`, or one starting with `.`.
pub fn validate_service(service: &str) -> Result<(), Error> {
    if service.is_empty() || service.contains('/') || service.starts_with('.') {
        return Err(Error::InvalidInstance(format!(
            "bad service name {service:?} (must be non-empty, without '/', not starting with '.')"
        )));
    }
    Ok(())
}

enum RegInner {
    #[cfg(feature = "etcd")]
    Etcd(etcd::EtcdRegistration),
    #[cfg(feature = "zookeeper")]
    ZooKeeper(zookeeper::ZkRegistration),
    File(file::FileRegistration),
}

/// Keeps an instance registered; dropping it deregisters (best effort, bounded by ~1 s).
pub struct Registration {
    inner: Option<RegInner>,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration").finish_non_exhaustive()
    }
}

impl Registration {
    /// Deregisters and waits until it is done (etcd: lease revoked, ZooKeeper: node deleted,
    /// each bounded by ~1 s; file: the entry is removed). For graceful shutdown.
    pub fn deregister(mut self) -> Result<(), Error> {
        match self.inner.take() {
            #[cfg(feature = "etcd")]
            Some(RegInner::Etcd(r)) => r.stop(),
            #[cfg(feature = "zookeeper")]
            Some(RegInner::ZooKeeper(r)) => r.stop(),
            Some(RegInner::File(r)) => r.stop(),
            None => Ok(()),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let r = match self.inner.take() {
            #[cfg(feature = "etcd")]
            Some(RegInner::Etcd(r)) => r.stop(),
            #[cfg(feature = "zookeeper")]
            Some(RegInner::ZooKeeper(r)) => r.stop(),
            Some(RegInner::File(r)) => r.stop(),
            None => Ok(()),
        };
        if let Err(e) = r {
            log::warn!("deregistering on drop: {e}");
        }
    }
}

/// A running watch; dropping it stops the callbacks (a callback already running finishes).
pub struct Watch {
    stopped: Arc<AtomicBool>,
    _guard: Option<Box<dyn Send + Sync>>,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("stopped", &self.stopped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Release);
    }
}
