//! `bench scenario`: the whole mesh on loopback, as child processes, under load.
//!
//! Three mock providers (small/medium/large, `bench provider` re-executed), three
//! `provider-agent`s, one `consumer-agent`, a file registry in a fresh temp dir (or a
//! local etcd, or a local ZooKeeper). Each scenario of `docs/scenario.md` starts its own topology, runs its
//! steps with [`crate::load`], samples each agent's CPU and memory from `/proc`, and
//! stops every process it started, also on error.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use codec::dubbo::Serialization;

use crate::direct;
use crate::harness::{self, Bins};
use crate::load::{self, LoadOpts, Params, Protocol};
use crate::procs::{self, Proc, Usage};
use test_support::etcd::Etcd;
use test_support::net::free_addr;
use test_support::zk::ZooKeeper;

/// Which scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// 3 providers, 200 threads, 50 ms, fastjson; 128/256/512 connections.
    Classic,
    /// Providers of uneven capacity (virtual cores 3/2/1 against weights 1/2/3).
    Uneven,
    /// 0 ms providers: latency added at one connection, requests per agent CPU-second.
    Overhead,
    /// Many idle keep-alive connections on the consumer-agent: memory per connection.
    Idle,
    /// The classic load (256 connections) with the consumer-agent and each
    /// provider-agent replaced once in the middle (`--upgrade-from`): errors and p99
    /// during the upgrade window against steady state before and after.
    Upgrade,
    /// What each feature (Dubbo in, ten traffic rules, observation, mutual TLS with
    /// `--tls`) adds to the agents' CPU per request at saturation, and to the p50
    /// latency at one connection, against the plain HTTP mesh: short windows of the
    /// two alternated (ABBA), the median of the paired differences reported, so that
    /// the machine's drift cancels out.
    Cost,
    /// All of the above.
    All,
}

/// Which registry the agents use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RegistryKind {
    /// The file registry in a fresh temp dir (`file:///dir`).
    Embedded,
    /// A local etcd (`$ETCD_BIN`, `/usr/bin/etcd` or on `PATH`) on free loopback ports.
    Etcd,
    /// A local ZooKeeper (Debian's `zookeeperd`, or `$ZOOKEEPER_HOME`) on a free loopback
    /// port, in Dubbo's layout (`zookeeper://127.0.0.1:PORT/dubbo`).
    Zookeeper,
}

/// Settings of a scenario run.
#[derive(Debug, Clone)]
pub struct ScenarioOpts {
    /// What to run.
    pub which: Which,
    /// Short run: fewer steps, 2,000 idle connections.
    pub quick: bool,
    /// The registry.
    pub registry: RegistryKind,
    /// Where reports (and child logs, under `logs/`) go.
    pub out: PathBuf,
    /// Warm-up of each load step.
    pub warmup: Duration,
    /// Measured time of each load step.
    pub duration: Duration,
    /// The `bench` binary to run providers with (default: this executable if it is
    /// `bench`, else `bench` in [`ScenarioOpts::bin_dir`]).
    pub bench_exe: Option<PathBuf>,
    /// Where `consumer-agent` and `provider-agent` are (default: next to this
    /// executable; built with cargo when missing).
    pub bin_dir: Option<PathBuf>,
    /// `--loops` of each agent.
    pub agent_loops: usize,
    /// Loops of the load generator.
    pub load_loops: usize,
    /// Connections of the idle scenario.
    pub idle_connections: usize,
    /// Agents' `--timeout-ms`.
    pub agent_timeout_ms: u64,
    /// Agents' `--retries`.
    pub agent_retries: u32,
    /// Also run the classic and overhead steps with mutual TLS between the agents.
    pub tls: bool,
    /// The cost scenario's paired rounds (`None`: 9, or 3 when quick).
    pub cost_rounds: Option<usize>,
    /// The features the cost scenario measures (`dubbo`, `rules`, `observe`, `mtls`;
    /// empty: all of them, `mtls` only with [`ScenarioOpts::tls`]).
    pub cost_features: Vec<String>,
}

impl ScenarioOpts {
    /// Defaults for a full or a quick run.
    pub fn new(which: Which, quick: bool) -> Self {
        ScenarioOpts {
            which,
            quick,
            registry: RegistryKind::Embedded,
            out: PathBuf::from("target/bench-report"),
            warmup: Duration::from_secs(if quick { 1 } else { 5 }),
            duration: Duration::from_secs(if quick { 2 } else { 20 }),
            bench_exe: None,
            bin_dir: None,
            agent_loops: 1,
            load_loops: 1,
            idle_connections: if quick { 2_000 } else { 10_000 },
            agent_timeout_ms: 3_000,
            agent_retries: 2,
            tls: false,
            cost_rounds: None,
            cost_features: Vec::new(),
        }
    }
}

/// CPU and memory of one agent during a step.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentUsage {
    /// `consumer-agent`, `provider-agent-small`, ...
    pub name: String,
    /// CPU seconds (user + system) spent in the measured window.
    pub cpu_secs: f64,
    /// Peak resident set so far (VmHWM), KiB.
    pub peak_rss_kb: u64,
}

/// One measured step.
#[derive(Debug, Clone)]
pub struct Step {
    /// The scenario.
    pub scenario: String,
    /// What the step is, e.g. `512 conns`.
    pub label: String,
    /// Load connections.
    pub connections: usize,
    /// Right answers per second.
    pub qps: f64,
    /// Best possible QPS, when defined.
    pub ceiling: Option<f64>,
    /// Latency quantiles, ms.
    pub p50_ms: f64,
    /// p99, ms.
    pub p99_ms: f64,
    /// Max, ms.
    pub max_ms: f64,
    /// The latency distribution, (percentile, ms), for the percentile chart; empty
    /// when nothing was measured.
    pub latency: Vec<(f64, f64)>,
    /// Requests finished in the window.
    pub requests: u64,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Each agent's CPU and memory.
    pub agents: Vec<AgentUsage>,
    /// Scenario-specific figures (e.g. `requests_per_agent_cpu_sec`, `bytes_per_idle_conn`).
    pub extra: BTreeMap<String, f64>,
}

impl Step {
    /// QPS over the ceiling.
    pub fn ratio(&self) -> Option<f64> {
        self.ceiling.filter(|c| *c > 0.0).map(|c| self.qps / c)
    }

    /// Agents' CPU seconds together.
    pub fn agent_cpu(&self) -> f64 {
        self.agents.iter().map(|a| a.cpu_secs).sum()
    }
}

/// A mock provider and its agent.
#[derive(Debug, Clone)]
pub(crate) struct ProviderSpec {
    name: &'static str,
    latency_ms: u64,
    threads: usize,
    cores: usize,
    cpu_us: u64,
    weight: u32,
}

impl ProviderSpec {
    fn capacity(&self) -> f64 {
        crate::provider::ProviderOpts {
            latency: Duration::from_millis(self.latency_ms),
            threads: self.threads,
            cores: self.cores,
            cpu_us: self.cpu_us,
            ..Default::default()
        }
        .capacity()
    }
}

pub(crate) fn race_specs(latency_ms: u64) -> Vec<ProviderSpec> {
    ["small", "medium", "large"]
        .into_iter()
        .zip(1..)
        .map(|(name, weight)| ProviderSpec {
            name,
            latency_ms,
            threads: 200,
            cores: 0,
            cpu_us: 0,
            weight,
        })
        .collect()
}

/// The uneven providers: weights 1/2/3 as in the race, but virtual cores 3/2/1, so
/// the static weights point the wrong way. 1 ms of CPU per call: 3,000/2,000/1,000
/// calls/s, 6,000 in all.
const UNEVEN_CPU_US: u64 = 1_000;

fn uneven_specs() -> Vec<ProviderSpec> {
    let mut s = race_specs(50);
    for (p, cores) in s.iter_mut().zip([3, 2, 1]) {
        p.cores = cores;
        p.cpu_us = UNEVEN_CPU_US;
    }
    s
}

pub(crate) fn find_bins(opts: &ScenarioOpts) -> io::Result<Bins> {
    Bins::find(opts.bin_dir.as_deref(), opts.bench_exe.as_deref())
}

/// Who stands in front of the providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Providers {
    /// A provider-agent in front of each (the mesh).
    Meshed,
    /// None: the providers are registered as unmeshed Dubbo providers (`protocol=dubbo`,
    /// as the ZooKeeper registry lists plain Dubbo ones) and the consumer-agent calls
    /// them over Dubbo itself.
    Unmeshed,
    /// Provider-agents, and mutual TLS between the agents (`--tls`): certificates from
    /// `deploy/tls/issue-certs.sh` in the topology's temp dir.
    MeshedTls,
    /// Provider-agents, with every agent observing each call (`overhead-observe`): the
    /// access log on (`--access-log`, a file in the topology's temp dir) and tracing
    /// (`--trace-sample-rate 1.0`, spans exported to an OTLP sink that discards them,
    /// [`crate::otlp_sink`]). What it costs is measured against [`Providers::Meshed`]
    /// in the same run.
    MeshedObserved,
    /// Provider-agents, every agent with an `--upgrade-socket`, so that the `upgrade`
    /// scenario can replace it by a new process.
    MeshedUpgradable,
}

/// An agent that can be replaced by a new process (`--upgrade-socket`).
#[derive(Debug, Clone)]
pub(crate) struct Upgradable {
    /// Its index in `Topology::procs`.
    proc: usize,
    bin: PathBuf,
    /// Its flags, `--upgrade-socket` included.
    args: Vec<String>,
    socket: PathBuf,
    logs: PathBuf,
}

/// A running mesh. Dropping it stops everything, newest first (etcd last).
#[derive(Debug)]
pub(crate) struct Topology {
    pub(crate) procs: Vec<Proc>,
    /// The unmeshed providers' registrations ([`Providers::Unmeshed`]), held while it runs.
    registrations: Vec<registry::Registration>,
    /// The local etcd of `--registry etcd`, stopped after `procs`.
    etcd: Option<Etcd>,
    /// The local ZooKeeper of `--registry zookeeper`, stopped after `procs`.
    zookeeper: Option<ZooKeeper>,
    /// Indices in `procs` of the agents (consumer first).
    agents: Vec<usize>,
    consumer: usize,
    pub(crate) consumer_addr: SocketAddr,
    /// The consumer-agent's `--dubbo-listen` address.
    pub(crate) dubbo_addr: SocketAddr,
    /// The mock providers' Dubbo addresses, in the order of their specs.
    pub(crate) provider_addrs: Vec<SocketAddr>,
    /// The longest of the mock providers' latencies: the load staggers its
    /// connections' first calls over it ([`LoadOpts::stagger`]).
    pub(crate) provider_latency: Duration,
    /// The registry's URL.
    registry_url: String,
    /// The consumer-agent's admin address.
    consumer_admin: SocketAddr,
    /// The OTLP collector the agents export spans to ([`Providers::MeshedObserved`]),
    /// stopped after `procs`.
    otlp_sink: Option<crate::otlp_sink::OtlpSink>,
    /// With [`Providers::MeshedUpgradable`]: the agents, consumer first.
    upgradable: Vec<Upgradable>,
    _tmp: tempfile::TempDir,
}

impl Drop for Topology {
    fn drop(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            p.stop(Duration::from_secs(3));
        }
        self.registrations.clear();
        self.zookeeper = None;
        if let Some(mut etcd) = self.etcd.take() {
            etcd.stop(Duration::from_secs(3));
        }
    }
}

impl Topology {
    /// Starts the topology, retrying with fresh ports: a port found free can be taken by
    /// another process's outgoing connection before our agent binds it (seen when the
    /// bench ran beside a busy test suite).
    pub(crate) fn start_retrying(
        opts: &ScenarioOpts,
        bins: &Bins,
        specs: &[ProviderSpec],
        tag: &str,
    ) -> io::Result<Topology> {
        Topology::start_with(opts, bins, specs, tag, Providers::Meshed)
    }

    /// [`start_retrying`](Self::start_retrying), with or without provider-agents.
    pub(crate) fn start_with(
        opts: &ScenarioOpts,
        bins: &Bins,
        specs: &[ProviderSpec],
        tag: &str,
        providers: Providers,
    ) -> io::Result<Topology> {
        let mut attempt = 1;
        loop {
            match Topology::start(opts, bins, specs, tag, providers) {
                Ok(t) => return Ok(t),
                Err(e) if attempt < 3 => {
                    eprintln!("{tag}: start failed ({e}); retrying on fresh ports");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn start(
        opts: &ScenarioOpts,
        bins: &Bins,
        specs: &[ProviderSpec],
        tag: &str,
        providers: Providers,
    ) -> io::Result<Topology> {
        let tmp = tempfile::Builder::new()
            .prefix("dubbo-mesh-bench")
            .tempdir()?;
        let logs = opts.out.join("logs").join(tag);
        let mut topo = Topology {
            procs: Vec::new(),
            registrations: Vec::new(),
            agents: Vec::new(),
            consumer: 0,
            consumer_addr: free_addr()?,
            dubbo_addr: free_addr()?,
            provider_addrs: Vec::new(),
            provider_latency: specs
                .iter()
                .map(|s| Duration::from_millis(s.latency_ms))
                .max()
                .unwrap_or_default(),
            etcd: None,
            zookeeper: None,
            registry_url: String::new(),
            consumer_admin: free_addr()?,
            otlp_sink: None,
            upgradable: Vec::new(),
            _tmp: tmp,
        };
        let deadline = Duration::from_secs(20);
        let registry = match opts.registry {
            RegistryKind::Embedded => {
                // Not created here: the registry makes its directory private (0700).
                let dir = topo._tmp.path().join("registry");
                format!("file://{}", dir.display())
            }
            RegistryKind::Etcd => {
                let data = topo._tmp.path().join("etcd");
                let etcd = Etcd::start(&data, &logs.join("etcd.log"))?;
                let url = format!("etcd://{}", etcd.client_addr());
                topo.etcd = Some(etcd);
                url
            }
            RegistryKind::Zookeeper => {
                let zk = ZooKeeper::start()?;
                let url = zk.url();
                topo.zookeeper = Some(zk);
                url
            }
        };
        topo.registry_url = registry.clone();
        if providers == Providers::MeshedObserved {
            topo.otlp_sink = Some(crate::otlp_sink::OtlpSink::start()?);
        }
        let otlp = topo.otlp_sink.as_ref().map(|s| s.endpoint());
        let mut provider_addrs = Vec::new();
        for s in specs {
            let addr = free_addr()?;
            let mut args = harness::provider_args(addr, s.latency_ms, s.threads);
            if s.cores > 0 {
                args.extend(["--cores".into(), s.cores.to_string()]);
                args.extend(["--cpu-us".into(), s.cpu_us.to_string()]);
            }
            let mut p = Proc::start(&format!("provider-{}", s.name), &bins.bench, &args, &logs)?;
            let ready = procs::wait_port(addr, deadline, &mut p);
            topo.procs.push(p);
            ready?;
            provider_addrs.push(addr);
            topo.provider_addrs.push(addr);
        }
        let loops = opts.agent_loops.max(1).to_string();
        if providers == Providers::Unmeshed {
            let reg = registry::open(Some(&registry)).map_err(io::Error::other)?;
            for (s, q) in specs.iter().zip(&provider_addrs) {
                let instance = registry::Instance::new(crate::provider::SERVICE, q.to_string())
                    .with_weight(s.weight)
                    .with_meta("protocol", "dubbo");
                let r = reg.register(instance).map_err(io::Error::other)?;
                topo.registrations.push(r);
            }
        }
        let meshed = if providers == Providers::Unmeshed {
            &[]
        } else {
            specs
        };
        let certs = topo._tmp.path().join("certs");
        if providers == Providers::MeshedTls {
            let mut names: Vec<String> = specs
                .iter()
                .map(|s| format!("provider-{}", s.name))
                .collect();
            names.push("consumer".into());
            harness::issue_certs(&certs, &names)?;
        }
        for (s, q) in meshed.iter().zip(&provider_addrs) {
            let (listen, admin) = (free_addr()?, free_addr()?);
            let mut args = harness::provider_agent_args(listen, admin, *q, &registry);
            args.extend(
                [
                    "--serialization",
                    "fastjson",
                    "--weight",
                    &s.weight.to_string(),
                    "--max-inflight",
                    &s.threads.to_string(),
                    "--loops",
                    &loops,
                ]
                .map(String::from),
            );
            if providers == Providers::MeshedTls {
                args.extend(harness::tls_args(&certs, &format!("provider-{}", s.name)));
            }
            if providers == Providers::MeshedObserved {
                let log = topo
                    ._tmp
                    .path()
                    .join(format!("access-provider-{}.log", s.name));
                args.extend(["--access-log".into(), log.display().to_string()]);
            }
            if let Some(url) = &otlp {
                args.extend(["--otlp-endpoint".into(), url.clone()]);
            }
            if providers == Providers::MeshedUpgradable {
                let name = format!("provider-agent-{}", s.name);
                topo.upgradable(&name, &bins.provider, &mut args, &logs);
            }
            let mut p = Proc::start(
                &format!("provider-agent-{}", s.name),
                &bins.provider,
                &args,
                &logs,
            )?;
            let ready = procs::wait_healthy(admin, deadline, &mut p);
            topo.agents.push(topo.procs.len());
            topo.procs.push(p);
            ready?;
        }
        let admin = topo.consumer_admin;
        let mut args = harness::consumer_agent_args(topo.consumer_addr, admin, &registry);
        args.extend(
            [
                "--lb",
                "adaptive",
                "--timeout-ms",
                &opts.agent_timeout_ms.to_string(),
                "--retries",
                &opts.agent_retries.to_string(),
                "--loops",
                &loops,
                "--dubbo-listen",
                &topo.dubbo_addr.to_string(),
            ]
            .map(String::from),
        );
        if providers == Providers::MeshedTls {
            args.extend(harness::tls_args(&certs, "consumer"));
        }
        if providers == Providers::MeshedObserved {
            let log = topo._tmp.path().join("access-consumer.log");
            args.extend(["--access-log".into(), log.display().to_string()]);
        }
        // Tracing on: every call sampled, spans exported to the sink.
        if let Some(url) = &otlp {
            args.extend(["--otlp-endpoint".into(), url.clone()]);
            args.extend(["--trace-sample-rate".into(), "1.0".into()]);
        }
        if providers == Providers::MeshedUpgradable {
            topo.upgradable("consumer-agent", &bins.consumer, &mut args, &logs);
            // Consumer first (the order of `upgradable`).
            if let Some(c) = topo.upgradable.pop() {
                topo.upgradable.insert(0, c);
            }
        }
        let mut p = Proc::start("consumer-agent", &bins.consumer, &args, &logs)?;
        let ready = procs::wait_healthy(admin, deadline, &mut p);
        topo.consumer = topo.procs.len();
        topo.agents.insert(0, topo.procs.len());
        topo.procs.push(p);
        ready?;
        topo.wait_routing(deadline)?;
        Ok(topo)
    }

    /// Gives the agent about to start as `procs[procs.len()]` an upgrade socket, and
    /// remembers how to start its successor.
    fn upgradable(&mut self, name: &str, bin: &Path, args: &mut Vec<String>, logs: &Path) {
        let socket = self._tmp.path().join(format!("{name}.upgrade.sock"));
        args.extend(["--upgrade-socket".into(), socket.display().to_string()]);
        self.upgradable.push(Upgradable {
            proc: self.procs.len(),
            bin: bin.to_path_buf(),
            args: args.clone(),
            socket,
            logs: logs.to_path_buf(),
        });
    }

    /// Replaces upgradable agent `k` (0: the consumer-agent) by a new process that takes
    /// its sockets over; returns once the old one exited and the new one offers its own
    /// upgrade socket.
    fn upgrade(&mut self, k: usize, generation: u32) -> io::Result<()> {
        let Some(u) = self.upgradable.get(k).cloned() else {
            return Err(io::Error::other("no such upgradable agent"));
        };
        let name = match self.procs.get(u.proc) {
            Some(p) => format!("{}-upgrade-{generation}", p.name),
            None => return Err(io::Error::other("no such agent")),
        };
        let mut args = u.args.clone();
        args.extend(["--upgrade-from".into(), u.socket.display().to_string()]);
        let mut new = Proc::start(&name, &u.bin, &args, &u.logs)?;
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            new.check_alive()?;
            let old_gone = self
                .procs
                .get_mut(u.proc)
                .is_none_or(|p| p.check_alive().is_err());
            if old_gone && u.socket.exists() {
                break;
            }
            if Instant::now() > end {
                return Err(io::Error::other(format!(
                    "{name}: the old process did not hand over within 30 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(slot) = self.procs.get_mut(u.proc) {
            *slot = new;
        }
        Ok(())
    }

    /// Waits until a call through the consumer-agent comes back right, failing early
    /// if an agent dies.
    fn wait_routing(&mut self, deadline: Duration) -> io::Result<()> {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let i = self.consumer;
            let Some(consumer) = self.procs.get_mut(i) else {
                return Err(io::Error::other("no consumer-agent"));
            };
            match harness::wait_routing(
                self.consumer_addr,
                left.min(Duration::from_millis(500)),
                consumer,
            ) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > end => return Err(e),
                Err(_) => {}
            }
            for i in self.agents.clone() {
                if let Some(p) = self.procs.get_mut(i) {
                    p.check_alive()?;
                }
            }
        }
    }

    /// Puts traffic rules for the race's service in the registry and waits until the
    /// consumer-agent has put them in force.
    fn put_rules(&mut self, doc: &str) -> io::Result<()> {
        let applied =
            || harness::metric_or_zero(self.consumer_admin, "consumer_rules_applied_total");
        let before = applied();
        let reg = registry::open(Some(&self.registry_url)).map_err(io::Error::other)?;
        reg.put_rules(crate::provider::SERVICE, Some(doc))
            .map_err(io::Error::other)?;
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if applied() > before {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(io::Error::other(
            "the consumer-agent never put the rules in force",
        ))
    }

    fn agent_usage(&mut self) -> Vec<(String, Usage)> {
        let mut out = Vec::new();
        for &i in &self.agents {
            if let Some(p) = self.procs.get_mut(i) {
                out.push((p.name.clone(), p.usage()));
            }
        }
        out
    }

    pub(crate) fn check_alive(&mut self) -> io::Result<()> {
        for p in &mut self.procs {
            p.check_alive()?;
        }
        if let Some(etcd) = self.etcd.as_mut() {
            etcd.check_alive()?;
        }
        if let Some(zk) = &self.zookeeper {
            if !zk.is_serving(0) {
                return Err(io::Error::other("ZooKeeper stopped serving"));
            }
        }
        Ok(())
    }
}

/// Runs one load step and samples the agents over its measured window.
fn run_step(
    opts: &ScenarioOpts,
    topo: &mut Topology,
    front: (&str, Protocol),
    label: &str,
    connections: usize,
    ceiling: Option<f64>,
) -> io::Result<Step> {
    run_step_with(opts, topo, front, label, connections, ceiling, |_| Ok(()))
}

/// [`run_step`], doing `during` to the topology once the measured window began.
fn run_step_with(
    opts: &ScenarioOpts,
    topo: &mut Topology,
    (scenario, protocol): (&str, Protocol),
    label: &str,
    connections: usize,
    ceiling: Option<f64>,
    during: impl FnOnce(&mut Topology) -> io::Result<()>,
) -> io::Result<Step> {
    let lopts = LoadOpts {
        target: match protocol {
            Protocol::Http => topo.consumer_addr,
            Protocol::Dubbo => topo.dubbo_addr,
        },
        connections,
        loops: opts.load_loops,
        warmup: opts.warmup,
        duration: opts.duration,
        params: Params::Ascii,
        salt: None,
        timeout: Duration::from_millis(
            opts.agent_timeout_ms * u64::from(opts.agent_retries + 1) + 2_000,
        ),
        progress: false,
        protocol,
        stagger: topo.provider_latency.min(opts.warmup),
    };
    eprintln!("{scenario}: {label} ...");
    let start = Instant::now();
    let worker = std::thread::spawn(move || load::run(&lopts));
    std::thread::sleep(opts.warmup);
    let before = topo.agent_usage();
    if let Err(e) = during(topo) {
        // The load run still ends on its own; its report is not worth more than this.
        let _ = worker.join();
        return Err(e);
    }
    std::thread::sleep(
        (start + opts.warmup + opts.duration).saturating_duration_since(Instant::now()),
    );
    let after = topo.agent_usage();
    let report = worker
        .join()
        .map_err(|_| io::Error::other("the load thread panicked"))??;
    topo.check_alive()?;
    let agents = before
        .iter()
        .zip(&after)
        .map(|((name, b), (_, a))| AgentUsage {
            name: name.clone(),
            cpu_secs: (a.cpu_secs - b.cpu_secs).max(0.0),
            peak_rss_kb: a.peak_rss_kb,
        })
        .collect();
    let h = &report.stats.hist;
    Ok(Step {
        scenario: scenario.to_owned(),
        label: label.to_owned(),
        connections,
        qps: report.qps(),
        ceiling,
        p50_ms: h.quantile(0.5) as f64 / 1000.0,
        latency: crate::chart::histogram_curve(h),
        p99_ms: h.quantile(0.99) as f64 / 1000.0,
        max_ms: h.max() as f64 / 1000.0,
        requests: report.requests,
        errors: report.stats.errors.clone(),
        agents,
        extra: BTreeMap::new(),
    })
}

/// The classic load at 256 connections, three steps: steady state, a window in which
/// the consumer-agent and then each provider-agent are replaced by new processes
/// (`--upgrade-from`, as `systemctl reload` does), steady state again. The window's
/// step carries `upgrade_secs` (how long the upgrades took) and `upgrades`; its errors
/// should be none, its p99 near the steady ones.
fn upgrade(opts: &ScenarioOpts, bins: &Bins, steps: &mut Vec<Step>) -> io::Result<()> {
    let specs = race_specs(50);
    let front = ("upgrade", Protocol::Http);
    let conns = 256;
    let ceiling = Some(classic_ceiling(conns, &specs));
    let mut topo =
        Topology::start_with(opts, bins, &specs, "upgrade", Providers::MeshedUpgradable)?;
    steps.push(run_step(
        opts,
        &mut topo,
        front,
        "steady, before",
        conns,
        ceiling,
    )?);
    let mut took = Duration::ZERO;
    let mut count = 0;
    // Long enough to hold every upgrade (a few seconds), even in a quick run.
    let mut window = opts.clone();
    window.duration = window.duration.max(Duration::from_secs(6));
    let mut s = run_step_with(
        &window,
        &mut topo,
        front,
        "upgrade window",
        conns,
        ceiling,
        |t| {
            let start = Instant::now();
            for k in 0..t.upgradable.len() {
                t.upgrade(k, 1)?;
                count += 1;
            }
            took = start.elapsed();
            Ok(())
        },
    )?;
    s.extra.insert("upgrades".into(), count as f64);
    s.extra.insert("upgrade_secs".into(), took.as_secs_f64());
    steps.push(s);
    steps.push(run_step(
        opts,
        &mut topo,
        front,
        "steady, after",
        conns,
        ceiling,
    )?);
    Ok(())
}

/// The classic ceiling: connections / latency, capped by total threads / latency.
fn classic_ceiling(conns: usize, specs: &[ProviderSpec]) -> f64 {
    let latency = specs.first().map_or(0.05, |s| s.latency_ms as f64 / 1000.0);
    let threads: usize = specs.iter().map(|s| s.threads).sum();
    conns.min(threads) as f64 / latency
}

fn step_conns(quick: bool) -> Vec<usize> {
    if quick {
        vec![128, 512]
    } else {
        vec![128, 256, 512]
    }
}

fn classic(opts: &ScenarioOpts, bins: &Bins, steps: &mut Vec<Step>) -> io::Result<()> {
    let specs = race_specs(50);
    // The HTTP path, then the same calls from Dubbo consumers (`--dubbo-listen`), then
    // HTTP again to providers outside the mesh (no provider-agents).
    let mut runs = vec![
        (Providers::Meshed, ("classic", Protocol::Http)),
        (Providers::Meshed, ("classic-dubbo", Protocol::Dubbo)),
        (Providers::Unmeshed, ("classic-unmeshed", Protocol::Http)),
    ];
    if opts.tls {
        runs.push((Providers::MeshedTls, ("classic-mtls", Protocol::Http)));
    }
    let mut topo: Option<(Providers, Topology)> = None;
    for (providers, front) in runs {
        if topo.as_ref().is_none_or(|(p, _)| *p != providers) {
            drop(topo.take()); // the previous topology stops first
            let t = Topology::start_with(opts, bins, &specs, front.0, providers)?;
            topo = Some((providers, t));
        }
        let Some((_, topo)) = topo.as_mut() else {
            continue;
        };
        for c in step_conns(opts.quick) {
            let s = run_step(
                opts,
                topo,
                front,
                &format!("{c} conns"),
                c,
                Some(classic_ceiling(c, &specs)),
            )?;
            steps.push(s);
        }
    }
    Ok(())
}

fn uneven(opts: &ScenarioOpts, bins: &Bins, steps: &mut Vec<Step>) -> io::Result<()> {
    let specs = uneven_specs();
    let capacity: f64 = specs.iter().map(ProviderSpec::capacity).sum();
    let mut topo = Topology::start_retrying(opts, bins, &specs, "uneven")?;
    for c in step_conns(opts.quick) {
        let ceiling = (c as f64 / 0.05).min(capacity);
        let mut s = run_step(
            opts,
            &mut topo,
            ("uneven", Protocol::Http),
            &format!("{c} conns"),
            c,
            Some(ceiling),
        )?;
        s.extra.insert("model_capacity_qps".into(), capacity);
        steps.push(s);
    }
    Ok(())
}

fn overhead(opts: &ScenarioOpts, bins: &Bins, steps: &mut Vec<Step>) -> io::Result<()> {
    let specs = race_specs(0);
    let saturating = if opts.quick { 64 } else { 256 };
    // The same single connection straight to a provider over Dubbo: what the two
    // agents add is the difference (one agent, for providers outside the mesh).
    let mut direct_p50_ms = None;
    let mut runs = vec![
        (Providers::Meshed, ("overhead", Protocol::Http)),
        (Providers::Meshed, ("overhead-dubbo", Protocol::Dubbo)),
        (Providers::Meshed, ("overhead-rules", Protocol::Http)),
        (Providers::Unmeshed, ("overhead-unmeshed", Protocol::Http)),
        // Observability on (access logs, and tracing with every call sampled and its
        // spans exported): its agent CPU per request is compared with `overhead`'s,
        // both off, in the same run.
        (
            Providers::MeshedObserved,
            ("overhead-observe", Protocol::Http),
        ),
    ];
    // Agent CPU per request of `overhead` at saturation, microseconds.
    let mut baseline_cpu_us = None;
    if opts.tls {
        runs.push((Providers::MeshedTls, ("overhead-mtls", Protocol::Http)));
    }
    let mut current: Option<(Providers, Topology)> = None;
    for (providers, front) in runs {
        if current.as_ref().is_none_or(|(p, _)| *p != providers) {
            drop(current.take()); // the previous topology stops first
            let t = Topology::start_with(opts, bins, &specs, front.0, providers)?;
            current = Some((providers, t));
        }
        let Some((_, topo)) = current.as_mut() else {
            continue;
        };
        if front.0 == "overhead-rules" {
            topo.put_rules(&ten_routes())?;
        }
        for (label, c) in [("1 conn", 1), ("saturating", saturating)] {
            let mut s = run_step(opts, topo, front, label, c, None)?;
            // Tracing's exports reached the collector (POSTs so far in this topology).
            if let Some(sink) = &topo.otlp_sink {
                s.extra.insert("otlp_posts".into(), sink.posts() as f64);
            }
            let cpu = s.agent_cpu();
            if cpu > 0.0 {
                let ok = s.qps * opts.duration.as_secs_f64();
                s.extra
                    .insert("requests_per_agent_cpu_sec".into(), ok / cpu);
                if c == saturating && ok > 0.0 {
                    let us = cpu / ok * 1e6;
                    s.extra.insert("agent_cpu_us_per_request".into(), us);
                    match (front.0, baseline_cpu_us) {
                        ("overhead", _) => baseline_cpu_us = Some(us),
                        ("overhead-observe", Some(base)) => {
                            s.extra
                                .insert("observe_added_agent_cpu_us_per_request".into(), us - base);
                        }
                        _ => {}
                    }
                }
            }
            if c == 1 {
                s.extra.insert("mesh_p50_ms_one_conn".into(), s.p50_ms);
                if direct_p50_ms.is_none() {
                    if let Some(&provider) = topo.provider_addrs.first() {
                        eprintln!("overhead: 1 conn straight to a provider ...");
                        let direct = direct::ping_pong(
                            provider,
                            Serialization::Fastjson,
                            opts.warmup,
                            opts.duration,
                        )?;
                        direct_p50_ms = Some(direct.latency.quantile(0.5) as f64 / 1000.0);
                        if direct.wrong > 0 {
                            s.errors.insert("direct_wrong".into(), direct.wrong);
                        }
                    }
                }
                if let Some(direct) = direct_p50_ms {
                    s.extra.insert("direct_p50_ms".into(), direct);
                    s.extra.insert(
                        "mesh_added_p50_us".into(),
                        ((s.p50_ms - direct) * 1000.0).round(),
                    );
                }
            }
            steps.push(s);
        }
    }
    Ok(())
}

/// A feature whose cost `cost` measures: how its topology differs from the plain mesh.
struct Feature {
    name: &'static str,
    /// `None`: the plain mesh's own topology (another front-end of the same agents).
    providers: Option<Providers>,
    protocol: Protocol,
    /// Ten traffic rules in force ([`ten_routes`]).
    rules: bool,
}

/// Agent CPU microseconds per right answer in a step of `window` (0 when nothing was
/// answered).
fn cpu_us_per_request(s: &Step, window: Duration) -> f64 {
    let ok = s.qps * window.as_secs_f64();
    if ok > 0.0 {
        s.agent_cpu() / ok * 1e6
    } else {
        0.0
    }
}

/// The median of `v` (0 when empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Paired, interleaved windows (see [`Which::Cost`]): in each round, for the plain
/// mesh and the feature's, a window at one connection, then one at saturation. One
/// step per feature, carrying `base_agent_cpu_us_per_request`,
/// `agent_cpu_us_per_request` (the feature's), `added_agent_cpu_us_per_request`,
/// `base_one_conn_p50_us`, `one_conn_p50_us` and `added_one_conn_p50_us`, each a
/// median over the rounds, and `rounds`.
fn cost(opts: &ScenarioOpts, bins: &Bins, steps: &mut Vec<Step>) -> io::Result<()> {
    let specs = race_specs(0);
    let conns = if opts.quick { 64 } else { 256 };
    let rounds = opts.cost_rounds.unwrap_or(if opts.quick { 3 } else { 9 });
    // Short windows, many of them: a pair close in time sees the same machine.
    let opts = &ScenarioOpts {
        warmup: opts.warmup.min(Duration::from_secs(1)),
        duration: opts.duration.min(Duration::from_secs(4)),
        ..opts.clone()
    };
    // The one-connection windows: thousands of calls in two seconds.
    let latency_opts = &ScenarioOpts {
        warmup: opts.warmup.min(Duration::from_millis(500)),
        duration: opts.duration.min(Duration::from_secs(2)),
        ..opts.clone()
    };
    let mut features = vec![
        Feature {
            name: "cost-dubbo",
            providers: None,
            protocol: Protocol::Dubbo,
            rules: false,
        },
        Feature {
            name: "cost-rules",
            providers: Some(Providers::Meshed),
            protocol: Protocol::Http,
            rules: true,
        },
        Feature {
            name: "cost-observe",
            providers: Some(Providers::MeshedObserved),
            protocol: Protocol::Http,
            rules: false,
        },
    ];
    if opts.tls || opts.cost_features.iter().any(|f| f == "mtls") {
        features.push(Feature {
            name: "cost-mtls",
            providers: Some(Providers::MeshedTls),
            protocol: Protocol::Http,
            rules: false,
        });
    }
    let wanted = &opts.cost_features;
    if let Some(unknown) =
        (wanted.iter()).find(|w| !features.iter().any(|f| f.name == format!("cost-{w}")))
    {
        return Err(io::Error::other(format!(
            "--features: no feature {unknown:?} (dubbo, rules, observe, mtls)"
        )));
    }
    features.retain(|f| wanted.is_empty() || wanted.iter().any(|w| f.name == format!("cost-{w}")));
    let mut base = Topology::start_with(opts, bins, &specs, "cost-base", Providers::Meshed)?;
    for f in features {
        // Started beside the plain mesh (free ports), idle while the other is loaded.
        let mut other = match f.providers {
            Some(p) => Some(Topology::start_with(opts, bins, &specs, f.name, p)?),
            None => None,
        };
        if let (true, Some(t)) = (f.rules, other.as_mut()) {
            t.put_rules(&ten_routes())?;
        }
        let (mut base_us, mut with_us, mut added) = (Vec::new(), Vec::new(), Vec::new());
        // The latency each adds at one connection, paired the same way.
        let (mut base_p50, mut with_p50, mut added_p50) = (Vec::new(), Vec::new(), Vec::new());
        let mut last = None;
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        for round in 0..rounds {
            // A B, then B A: a steady drift of the machine's speed cancels out.
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            let (mut us, mut p50_us) = ([0.0f64; 2], [0.0f64; 2]);
            for with in order {
                let (topo, protocol) = match (with, other.as_mut()) {
                    (true, Some(t)) => (t, f.protocol),
                    (true, None) => (&mut base, f.protocol),
                    (false, _) => (&mut base, Protocol::Http),
                };
                let label = format!("round {round} {}", if with { "with" } else { "without" });
                let one = run_step(latency_opts, topo, (f.name, protocol), &label, 1, None)?;
                let s = run_step(opts, topo, (f.name, protocol), &label, conns, None)?;
                for (k, v) in one.errors.iter().chain(&s.errors) {
                    *errors.entry(k.clone()).or_default() += v;
                }
                us[usize::from(with)] = cpu_us_per_request(&s, opts.duration);
                p50_us[usize::from(with)] = one.p50_ms * 1000.0;
                if with {
                    last = Some(s);
                }
            }
            base_us.push(us[0]);
            with_us.push(us[1]);
            added.push(us[1] - us[0]);
            base_p50.push(p50_us[0]);
            with_p50.push(p50_us[1]);
            added_p50.push(p50_us[1] - p50_us[0]);
        }
        let Some(mut step) = last else { continue };
        step.label = format!("{rounds} paired rounds");
        step.errors = errors;
        step.latency = Vec::new();
        step.extra.insert("rounds".into(), rounds as f64);
        for (name, values) in [
            ("base_agent_cpu_us_per_request", base_us),
            ("agent_cpu_us_per_request", with_us),
            ("added_agent_cpu_us_per_request", added),
            ("base_one_conn_p50_us", base_p50),
            ("one_conn_p50_us", with_p50),
            ("added_one_conn_p50_us", added_p50),
        ] {
            step.extra.insert(name.into(), median(values));
        }
        eprintln!(
            "{}: {:.2} µs of agent CPU added per request, {:.0} µs at p50 at one connection (medians of {rounds} pairs)",
            f.name,
            step.extra["added_agent_cpu_us_per_request"],
            step.extra["added_one_conn_p50_us"]
        );
        steps.push(step);
    }
    Ok(())
}

/// Ten routes for the race's service, as the rules' cost is measured: nine that the
/// race's calls do not match (other methods, an attachment they do not carry), then a
/// split of the whole pool by version, which every call takes.
fn ten_routes() -> String {
    let mut routes: Vec<String> = (0..9)
        .map(|i| {
            if i % 2 == 0 {
                format!(r#"{{"name": "r{i}", "match": {{"method": ["m{i}", "n{i}"]}}, "timeout_ms": 500}}"#)
            } else {
                format!(r#"{{"name": "r{i}", "match": {{"attachments": {{"tier": "t{i}"}}}}, "retries": 0}}"#)
            }
        })
        .collect();
    routes.push(
        r#"{"name": "all", "match": {"method": "hash"},
            "to": [{"version": "", "weight": 90}, {"group": "", "weight": 10}]}"#
            .to_owned(),
    );
    format!(r#"{{"routes": [{}]}}"#, routes.join(","))
}

fn idle(opts: &ScenarioOpts, bins: &Bins, steps: &mut Vec<Step>) -> io::Result<()> {
    let specs = race_specs(0);
    let mut topo = Topology::start_retrying(opts, bins, &specs, "idle")?;
    let n = opts.idle_connections;
    eprintln!("idle: {n} keep-alive connections ...");
    let addr = topo.consumer_addr;
    let rss = |topo: &mut Topology| {
        let i = topo.consumer;
        topo.procs.get_mut(i).map_or(0, |p| p.usage().rss_kb)
    };
    std::thread::sleep(Duration::from_millis(300));
    let base = rss(&mut topo);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        conns.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let connected = rss(&mut topo);
    // One call on each, so every connection has carried a request (keep-alive).
    let (req, expected) = load::race_request(&addr.to_string(), "idle", None);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut ok = 0u64;
    for batch in conns.chunks_mut(500) {
        for s in batch.iter_mut() {
            s.write_all(&req)?;
        }
        for s in batch.iter_mut() {
            match harness::read_answer(s) {
                Ok((200, body)) if harness::is_right(200, &body, expected) => ok += 1,
                Ok((200, _)) => *errors.entry("wrong".into()).or_default() += 1,
                Ok((code, _)) => *errors.entry(format!("status_{code}")).or_default() += 1,
                Err(_) => *errors.entry("closed".into()).or_default() += 1,
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let used = rss(&mut topo);
    topo.check_alive()?;
    let agents = topo
        .agent_usage()
        .into_iter()
        .map(|(name, u)| AgentUsage {
            name,
            cpu_secs: 0.0,
            peak_rss_kb: u.peak_rss_kb,
        })
        .collect();
    drop(conns);
    let per = |kb: u64| kb.saturating_sub(base) as f64 * 1024.0 / n.max(1) as f64;
    let mut extra = BTreeMap::new();
    extra.insert("consumer_rss_base_kb".into(), base as f64);
    extra.insert("bytes_per_conn_connected".into(), per(connected));
    extra.insert("bytes_per_conn_after_a_call".into(), per(used));
    steps.push(Step {
        scenario: "idle".into(),
        label: format!("{n} idle conns"),
        connections: n,
        qps: 0.0,
        ceiling: None,
        p50_ms: 0.0,
        latency: Vec::new(),
        p99_ms: 0.0,
        max_ms: 0.0,
        requests: ok + errors.values().sum::<u64>(),
        errors,
        agents,
        extra,
    });
    // With --tls, the same on a consumer-agent serving HTTP over TLS.
    #[cfg(feature = "tls")]
    if opts.tls {
        let logs = opts.out.join("logs").join("idle-tls");
        std::fs::create_dir_all(&logs)?;
        let tmp = topo._tmp.path().to_owned();
        let step = crate::idle_tls::step(&bins.consumer, &topo.registry_url, &tmp, &logs, n)?;
        steps.push(step);
    }
    Ok(())
}

/// Everything a scenario run measured.
#[derive(Debug, Clone, Default)]
pub struct ScenarioReport {
    /// Measured steps, in order.
    pub steps: Vec<Step>,
    /// Scenarios that failed, with why.
    pub failures: Vec<(String, String)>,
}

/// Runs the chosen scenarios; a scenario that fails is recorded and the others still
/// run. Every process started is stopped before this returns.
///
/// # Errors
/// The binaries could not be found or built.
pub fn run(opts: &ScenarioOpts) -> io::Result<ScenarioReport> {
    let bins = find_bins(opts)?;
    std::fs::create_dir_all(&opts.out)?;
    type Runner = fn(&ScenarioOpts, &Bins, &mut Vec<Step>) -> io::Result<()>;
    let all: [(Which, &str, Runner); 6] = [
        (Which::Classic, "classic", classic),
        (Which::Uneven, "uneven", uneven),
        (Which::Overhead, "overhead", overhead),
        (Which::Idle, "idle", idle),
        (Which::Upgrade, "upgrade", upgrade),
        (Which::Cost, "cost", cost),
    ];
    let mut report = ScenarioReport::default();
    for (w, name, f) in all {
        if opts.which != Which::All && opts.which != w {
            continue;
        }
        if let Err(e) = f(opts, &bins, &mut report.steps) {
            eprintln!("{name}: failed: {e}");
            report.failures.push((name.to_owned(), e.to_string()));
        }
    }
    Ok(report)
}
