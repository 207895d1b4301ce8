//! The provider-agent of dubbo-mesh: agent protocol in, Dubbo out.
//!
//! ```text
//! consumer-agent ==agent protocol==> provider-agent --Dubbo/TCP--> provider
//! Dubbo consumer ======Dubbo=======/  (--dubbo-listen)
//! ```
//!
//! Every event loop accepts agent connections and owns its own few persistent
//! connections to the provider, so a call never leaves the loop it arrived on (see
//! `loop_handler`). A control thread owns the registry registrations: loops report
//! their provider connection going up or down through a channel, and the control thread
//! registers each service only while every loop can reach the provider. With `--authz`
//! it also watches the authorization policy file and hands each new policy to every
//! loop (see `authz`).
//!
//! [`start`] starts everything and returns a [`Running`] agent; the binary adds flags and
//! signal handling, tests call it in-process.

#![deny(missing_docs)]

mod admin;
mod admission;
mod authz;
pub mod config;
mod loop_handler;
mod metrics;
mod tls;
mod upgrade;
mod upstream;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use registry::{Instance, Registration, Registry};

pub use crate::config::Config;
use crate::loop_handler::{LoopConfig, LoopMsg, ProviderLoop, Tag};
pub use crate::metrics::Metrics;

/// What loops (and the handle) tell the control thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// Loop `i` has a provider connection open again.
    ProviderUp(usize),
    /// Loop `i` has no provider connection open.
    ProviderDown(usize),
    /// Graceful stop.
    Stop,
}

/// A running provider-agent.
#[derive(Debug)]
pub struct Running {
    agent_addr: SocketAddr,
    dubbo_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    metrics: Metrics,
    events: Sender<Event>,
    control: Option<JoinHandle<()>>,
    /// Set once a new process took the listeners over (`--upgrade-socket`).
    handed_over: Arc<upgrade::HandedOver>,
    /// Set once this process serves alone (after `--upgrade-from`, the old one let go).
    serving: Arc<upgrade::HandedOver>,
}

/// Why the agent could not start.
#[derive(Debug)]
pub enum StartError {
    /// A flag's value is invalid (`--service`, the `--authz` policy), or flags do not
    /// go together.
    Config(String),
    /// Binding or starting the loops or the admin port failed.
    Io(io::Error),
    /// The registry could not be opened.
    Registry(registry::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Io(e) => write!(f, "{e}"),
            StartError::Registry(e) => write!(f, "registry: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

impl Running {
    /// The address agent connections are accepted on (the real port when 0 was asked).
    pub fn agent_addr(&self) -> SocketAddr {
        self.agent_addr
    }

    /// The address Dubbo consumers are accepted on, with `--dubbo-listen` (the real
    /// port when 0 was asked).
    pub fn dubbo_addr(&self) -> Option<SocketAddr> {
        self.dubbo_addr
    }

    /// The admin server's address, if one runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The agent's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Calls `f` (once, on another thread) when a new process has taken the listeners
    /// over (`--upgrade-socket`): the agent is draining, and [`Running::stop`] waits
    /// for it to finish. At once if that happened already.
    pub fn when_handed_over(&self, f: impl FnOnce() + Send + 'static) {
        self.handed_over.then(Box::new(f));
    }

    /// Calls `f` (once) when this process is the one serving: at once, unless started
    /// with `--upgrade-from`; then once it is registered and the old process stopped
    /// accepting (or it gave up waiting for the registration). The binary tells
    /// systemd its pid then.
    pub fn when_serving(&self, f: impl FnOnce() + Send + 'static) {
        self.serving.then(Box::new(f));
    }

    /// Graceful stop: deregister, stop accepting, drain calls in flight (bounded by
    /// `--drain-secs`), then return. After a handover (see
    /// [`Running::when_handed_over`]): consumer-agents were told GOAWAY, and this waits
    /// for them to move away (or `--drain-secs`); the registration withdrawn leaves the
    /// new process's in place.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(t) = self.control.take() {
            let _ = self.events.send(Event::Stop);
            if t.join().is_err() {
                log::error!("the control thread panicked");
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts a provider-agent: loops, listener, provider connections, admin server and the
/// control thread that keeps the registry in step with the provider's reachability.
///
/// # Errors
/// A `--service` is invalid, the `--authz` policy cannot be read or is invalid, the
/// registry cannot be opened, or binding the listen or admin address failed.
pub fn start(config: Config) -> Result<Running, StartError> {
    let services = config.service_variants().map_err(StartError::Config)?;
    let authz = match &config.authz {
        Some(path) => {
            let (watcher, policy) = authz::Watcher::start(path)
                .map_err(|e| StartError::Config(format!("--authz: {e}")))?;
            Some((watcher, Arc::new(policy)))
        }
        None => None,
    };
    if config.dubbo_listen.is_some() && config.serialization != config::SerializationArg::Hessian2 {
        return Err(StartError::Config(
            "--dubbo-listen relays Dubbo consumers' hessian2 calls as they are: it needs a provider speaking hessian2 (--serialization hessian2)".into(),
        ));
    }
    let registry = registry::open(config.registry.as_deref()).map_err(StartError::Registry)?;
    if config.services.is_empty() {
        log::warn!("no --service given: nothing will be registered");
    }
    let loops = config.loops.max(1);
    let metrics = Metrics::with_method_series(loops, config.max_method_series as usize);
    let access_log = reactor_admin::access_log::AccessLog::from_flag(config.access_log.as_deref());
    if let Some(log) = access_log.map_err(StartError::Config)? {
        metrics.set_access_log(log);
    }
    if let Some(spans) = reactor_admin::otlp::from_flags(
        config.otlp_endpoint.as_deref(),
        config.trace_sample_rate,
        "provider-agent",
    )
    .map_err(StartError::Config)?
    {
        metrics.set_spans(spans);
    }
    if let Some((watcher, policy)) = &authz {
        metrics.authz_loaded(policy.rules(), false);
        log::info!(
            "authorization policy {}: {} rule(s); any other call is refused",
            watcher.path().display(),
            policy.rules()
        );
    }
    let tls = tls::Tls::start(&config, &metrics).map_err(StartError::Config)?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let loop_cfg = Arc::new(LoopConfig {
        provider: config.provider,
        serialization: config.serialization.into(),
        dubbo_version: config.dubbo_version.clone(),
        provider_conns: config.provider_conns.max(1),
        heartbeat: config.heartbeat(),
        drain: config.drain(),
        admission: admission::Published::new(loops),
        services: services.clone(),
        policy: authz.as_ref().map(|(_, p)| p.clone()),
        agent: config.clone(),
    });
    let reactor_cfg = reactor::Config {
        loops,
        thread_name: "provider-agent".into(),
        max_connections: usize::try_from(config.max_connections).unwrap_or(usize::MAX),
        // A whole frame of either protocol (8 MiB bodies) may wait in a connection's input.
        max_input: codec::agent::MAX_BODY.max(codec::dubbo::MAX_BODY_LEN) + 64 * 1024,
        ..reactor::Config::default()
    };
    let (m, events) = (metrics.clone(), tx.clone());
    let mut builder = reactor::Builder::new(reactor_cfg);
    // A binary upgrade: the listening sockets come from the running agent.
    let mut takeover = match &config.upgrade_from {
        Some(path) => Some(upgrade::take(path).map_err(StartError::Io)?),
        None => None,
    };
    let agent_socks = upgrade::inherited(&mut takeover, upgrade::AGENT, config.listen);
    builder = match (&tls, agent_socks) {
        #[cfg(feature = "tls")]
        (Some(t), Some(socks)) => {
            builder.listen_tls_inherited(socks, Tag::Agent, t.acceptor.clone())
        }
        #[cfg(feature = "tls")]
        (Some(t), None) => builder.listen_tls(config.listen, Tag::Agent, t.acceptor.clone()),
        (_, Some(socks)) => builder.listen_inherited(socks, Tag::Agent),
        _ => builder.listen(config.listen, Tag::Agent),
    };
    if let Some(addr) = config.dubbo_listen {
        builder = match upgrade::inherited(&mut takeover, upgrade::DUBBO, addr) {
            Some(socks) => builder.listen_inherited(socks, Tag::Dubbo),
            None => builder.listen(addr, Tag::Dubbo),
        };
    }
    // The admin port before the loops: once they run they accept (on sockets taken
    // over, too), and a start failing after that would drop what they accepted.
    let admin = match config.admin {
        Some(a) => {
            let inherited = upgrade::inherited(&mut takeover, upgrade::ADMIN, a);
            Some(admin::Admin::spawn(a, metrics.clone(), inherited).map_err(StartError::Io)?)
        }
        None => None,
    };
    let reactor = builder
        .start(move |i, _| ProviderLoop::new(i, loop_cfg.clone(), m.clone(), events.clone()))
        .map_err(StartError::Io)?;
    for h in reactor.handles() {
        let _ = h.send(LoopMsg::Start);
    }
    let agent_addr = reactor
        .local_addrs()
        .first()
        .copied()
        .ok_or_else(|| StartError::Io(io::Error::other("no listener bound")))?;
    let dubbo_addr = reactor.local_addrs().get(1).copied();
    let admin_addr = admin.as_ref().map(admin::Admin::addr);
    let advertised = config.advertised(agent_addr);
    log::info!(
        "provider-agent listening on {agent_addr} (advertised {advertised}), provider {}, {loops} loop(s)",
        config.provider
    );
    let dubbo_advertised = dubbo_addr.map(|d| Config::dubbo_advertised(&advertised, d));
    if let (Some(d), Some(adv)) = (dubbo_addr, &dubbo_advertised) {
        log::info!("taking Dubbo from unmeshed consumers on {d} (registered as dubbo.addr {adv})");
    }
    let instances: Vec<Instance> = services
        .iter()
        .map(|(service, variants)| {
            let mut inst = Instance::new(service.clone(), advertised.clone())
                .with_weight(config.weight)
                .with_meta(
                    "serialization",
                    format!("{:?}", config.serialization).to_lowercase(),
                )
                .with_variants(variants);
            for (k, v) in &config.labels {
                inst = inst.with_meta(format!("label.{k}"), v.clone());
            }
            let inst = match tls.as_ref().and_then(|t| t.identity.clone()) {
                Some(id) => inst.with_meta(tls::IDENTITY_META, id),
                None => inst,
            };
            match &dubbo_advertised {
                Some(d) => inst.with_meta(DUBBO_ADDR_META, d.clone()),
                None => inst,
            }
        })
        .collect();
    let handed_over = Arc::new(upgrade::HandedOver::default());
    let serving = Arc::new(upgrade::HandedOver::default());
    if takeover.is_none() {
        serving.set();
    }
    let control = Control {
        // Said ready once registered (so the old process's withdrawal leaves no gap),
        // or after a while if the provider cannot be reached.
        takeover: takeover.map(|t| (t, Instant::now() + TAKEOVER_REGISTERED_WITHIN)),
        upgrade_socket: config.upgrade_socket.clone(),
        dubbo: dubbo_addr.is_some(),
        handover: None,
        handed_over: handed_over.clone(),
        serving: serving.clone(),
        registry,
        registrations: instances.iter().map(|_| None).collect(),
        instances,
        up: vec![false; loops],
        events: rx,
        reactor: Some(reactor),
        admin,
        authz: authz.map(|(w, _)| w),
        tls,
        metrics: metrics.clone(),
    };
    let control = std::thread::Builder::new()
        .name("provider-agent-control".into())
        .spawn(move || control.run())
        .map_err(StartError::Io)?;
    Ok(Running {
        agent_addr,
        dubbo_addr,
        admin_addr,
        metrics,
        events: tx,
        control: Some(control),
        handed_over,
        serving,
    })
}

/// How long a new process (`--upgrade-from`) waits to be registered before it tells
/// the old one to stop anyway (the provider unreachable: neither is registered).
const TAKEOVER_REGISTERED_WITHIN: Duration = Duration::from_secs(10);

/// The metadata key of a registered instance naming its Dubbo listener
/// (`--dubbo-listen`), `host:port`: the ZooKeeper registry publishes
/// `dubbo://<dubbo.addr>/...` from it, so unmeshed Dubbo consumers find the agent.
pub const DUBBO_ADDR_META: &str = "dubbo.addr";

/// How often a registration that failed is tried again while the provider is up.
const REGISTER_RETRY: Duration = Duration::from_secs(1);

/// The control thread's state: it alone touches the registry.
struct Control {
    /// `--upgrade-from`: the old process, told ready once registered (or at the time
    /// given).
    takeover: Option<(reactor::handover::Takeover, Instant)>,
    /// `--upgrade-socket`: offered once the old process (if any) let go of it.
    upgrade_socket: Option<std::path::PathBuf>,
    /// With `--dubbo-listen`.
    dubbo: bool,
    /// The thread offering the listeners to a new process.
    handover: Option<reactor::handover::Server>,
    handed_over: Arc<upgrade::HandedOver>,
    serving: Arc<upgrade::HandedOver>,
    registry: Registry,
    instances: Vec<Instance>,
    /// One per instance, `None` while not registered.
    registrations: Vec<Option<Registration>>,
    up: Vec<bool>,
    events: Receiver<Event>,
    reactor: Option<reactor::Reactor<LoopMsg>>,
    admin: Option<admin::Admin>,
    /// The `--authz` policy file, checked for changes.
    authz: Option<authz::Watcher>,
    /// Mutual TLS (`--tls-cert`): its files, checked for changes.
    tls: Option<tls::Tls>,
    metrics: Metrics,
}

impl Control {
    fn run(mut self) {
        loop {
            self.upgrade_step();
            // While the provider is up and a registration failed, retry it now and then;
            // with a policy file, check it once a second.
            let retry = self.provider_up() && self.registrations.iter().any(Option::is_none);
            let now = Instant::now();
            let wait = match (&self.authz, retry) {
                (Some(w), _) => Some(w.until_due(now).min(REGISTER_RETRY)),
                (None, true) => Some(REGISTER_RETRY),
                (None, false) => None,
            };
            let wait = match (wait, self.tls.as_ref().map(|t| t.until_due(now))) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // A takeover waiting for the registration: look again soon.
            let wait = match (wait, self.takeover.is_some()) {
                (w, true) => Some(w.map_or(TAKEOVER_POLL, |w| w.min(TAKEOVER_POLL))),
                (w, false) => w,
            };
            let ev = match wait {
                Some(wait) => match self.events.recv_timeout(wait) {
                    Ok(ev) => Some(ev),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match self.events.recv() {
                    Ok(ev) => Some(ev),
                    Err(_) => break,
                },
            };
            self.check_policy();
            if let Some(identity) = self.tls.as_mut().and_then(|t| t.check(&self.metrics)) {
                self.republish(identity);
            }
            let Some(ev) = ev else {
                if retry {
                    self.register();
                }
                continue;
            };
            match ev {
                Event::ProviderUp(i) | Event::ProviderDown(i) => {
                    if let Some(u) = self.up.get_mut(i) {
                        *u = ev == Event::ProviderUp(i);
                    }
                    if self.provider_up() {
                        self.register();
                    } else {
                        self.deregister();
                    }
                }
                Event::Stop => break,
            }
        }
        if let Some(h) = self.handover.take() {
            h.stop();
        }
        if let Some((t, _)) = self.takeover.take() {
            // Stopped before it was ready: the old process serves on.
            drop(t);
        }
        log::info!("stopping: deregistering, then draining calls in flight");
        self.deregister();
        if let Some(r) = self.reactor.take() {
            r.stop();
            r.join();
        }
        // The loops' last access log lines reach the file before the process exits, and
        // their last spans the collector (within a second), the exporter thread joined.
        self.metrics.sync_access_log();
        if let Some(spans) = self.metrics.spans() {
            spans.close(Duration::from_secs(1));
        }
        if let Some(mut a) = self.admin.take() {
            a.stop();
        }
        log::info!("stopped");
    }

    /// A binary upgrade's steps: tells the old process to stop once registered (or
    /// past the deadline), then offers this one's listeners (`--upgrade-socket`).
    fn upgrade_step(&mut self) {
        if let Some((_, by)) = &self.takeover {
            let registered = self.registrations.iter().all(Option::is_some);
            let late = Instant::now() >= *by;
            if !registered && !late {
                return;
            }
            if !registered {
                log::warn!(
                    "not registered within {TAKEOVER_REGISTERED_WITHIN:?} (provider unreachable?): \
                     taking over anyway"
                );
            }
            if let Some((t, _)) = self.takeover.take() {
                let handles = self.reactor.iter().flat_map(|r| r.handles().to_vec());
                upgrade::ready(t, handles.collect(), LoopMsg::Adopt);
                self.serving.set();
            }
        }
        if self.handover.is_some() {
            return;
        }
        let Some(path) = self.upgrade_socket.take() else {
            return;
        };
        let Some(reactor) = &self.reactor else {
            return;
        };
        let listeners = offered_listeners(reactor, self.dubbo, self.admin.as_ref());
        let served = listeners.map_err(StartError::Io).and_then(|l| {
            upgrade::serve(
                &path,
                "provider-upgrade",
                l,
                reactor.handles().to_vec(),
                LoopMsg::HandOver,
                self.handed_over.clone(),
            )
            .map_err(StartError::Io)
        });
        match served {
            Ok(s) => self.handover = Some(s),
            Err(e) => log::error!("no binary upgrade possible: {e}"),
        }
    }

    /// Reloads the policy file if a check is due and it changed: a new policy goes to
    /// every loop; one that does not parse is logged and counted, and the one in force
    /// stays.
    fn check_policy(&mut self) {
        let Some(w) = self.authz.as_mut() else {
            return;
        };
        match w.poll(Instant::now()) {
            None => {}
            Some(Ok(policy)) => {
                log::info!(
                    "authorization policy {} reloaded: {} rule(s)",
                    w.path().display(),
                    policy.rules()
                );
                self.metrics.authz_loaded(policy.rules(), true);
                let policy = Arc::new(policy);
                for h in self.reactor.iter().flat_map(|r| r.handles()) {
                    let _ = h.send(LoopMsg::Policy(policy.clone()));
                }
            }
            Some(Err(e)) => {
                log::error!(
                    "authorization policy not reloaded: {e}; the previous policy stays in force"
                );
                self.metrics.authz_reload_failed();
            }
        }
    }

    /// Whether every loop reaches the provider.
    fn provider_up(&self) -> bool {
        self.up.iter().all(|&u| u)
    }

    /// Registers every instance not registered yet.
    fn register(&mut self) {
        for (inst, slot) in self.instances.iter().zip(&mut self.registrations) {
            if slot.is_some() {
                continue;
            }
            match self.registry.register(inst.clone()) {
                Ok(r) => {
                    log::info!("registered {} at {}", inst.service, inst.addr);
                    *slot = Some(r);
                }
                Err(e) => log::error!(
                    "registering {} at {}: {e}; retrying every {REGISTER_RETRY:?}",
                    inst.service,
                    inst.addr
                ),
            }
        }
    }

    /// A reloaded certificate names another identity: each instance is registered again
    /// with it before its old registration is withdrawn (the registry keeps the later of
    /// two registrants of one address), so consumer-agents, which check a
    /// provider-agent's certificate against the registry, never see it missing.
    fn republish(&mut self, identity: Option<String>) {
        for (inst, slot) in self.instances.iter_mut().zip(&mut self.registrations) {
            match &identity {
                Some(id) => inst.meta.insert(tls::IDENTITY_META.to_owned(), id.clone()),
                None => inst.meta.remove(tls::IDENTITY_META),
            };
            let Some(old) = slot.take() else { continue };
            match self.registry.register(inst.clone()) {
                Ok(r) => *slot = Some(r),
                Err(e) => log::error!(
                    "registering {} at {} with its new identity: {e}; retrying every {REGISTER_RETRY:?}",
                    inst.service,
                    inst.addr
                ),
            }
            if let Err(e) = old.deregister() {
                log::warn!("deregistering the old identity's entry: {e}");
            }
        }
    }

    fn deregister(&mut self) {
        for r in self.registrations.iter_mut().filter_map(Option::take) {
            if let Err(e) = r.deregister() {
                log::warn!("deregistering: {e}");
            }
        }
        if !self.instances.is_empty() {
            log::debug!("deregistered (provider not reachable from every loop, or stopping)");
        }
    }
}

/// How often the control thread looks at a takeover waiting for the registration.
const TAKEOVER_POLL: Duration = Duration::from_millis(50);

/// The listening sockets a new process takes over (`--upgrade-socket`), by name.
fn offered_listeners(
    reactor: &reactor::Reactor<LoopMsg>,
    dubbo: bool,
    admin: Option<&admin::Admin>,
) -> io::Result<Vec<(String, Vec<std::net::TcpListener>)>> {
    let mut socks = reactor.listeners()?.into_iter();
    let mut out = Vec::new();
    if let Some(agent) = socks.next() {
        out.push((upgrade::AGENT.to_owned(), agent));
    }
    if let Some(d) = socks.next().filter(|_| dubbo) {
        out.push((upgrade::DUBBO.to_owned(), d));
    }
    if let Some(a) = admin {
        out.push((upgrade::ADMIN.to_owned(), a.listeners()?));
    }
    Ok(out)
}
