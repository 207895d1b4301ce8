//! The `bench` command: mock provider, load generator, scenarios.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use std::path::PathBuf;

use bench::echo::{self, EchoOpts};
use bench::load::{self, LoadOpts, Params};
use bench::provider::{self, ProviderOpts};
use bench::report;
use bench::scenario::{self, RegistryKind, ScenarioOpts, Which};
use bench::soak::{self, SoakOpts};

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "dubbo-mesh bench: mock provider, load generator, scenarios"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// A mock Dubbo provider of IHelloService.hash(String).
    Provider(ProviderArgs),
    /// A checking load generator, HTTP or Dubbo (closed loop over keep-alive
    /// connections).
    Load(LoadArgs),
    /// A trivial server of the race's HTTP call (to measure the load generator).
    #[command(hide = true)]
    HttpEcho(EchoArgs),
    /// Starts the whole mesh on loopback and runs the scenarios against it.
    Scenario(ScenarioArgs),
    /// The classic topology under steady load for long: RSS and open fds of every
    /// process sampled each second, judged flat (exit status 1 if not, or on any error).
    Soak(SoakArgs),
}

#[derive(clap::Args, Debug)]
struct SoakArgs {
    /// How long the load runs (seconds).
    #[arg(long, default_value_t = 600)]
    duration_secs: u64,
    /// Load connections.
    #[arg(long, default_value_t = 512)]
    connections: usize,
    /// Registry the agents use.
    #[arg(long, value_enum, default_value_t = RegistryKind::Embedded)]
    registry: RegistryKind,
    /// Where the report goes.
    #[arg(long, default_value = "target/bench-soak")]
    out: PathBuf,
    /// Directory holding consumer-agent and provider-agent (default: next to bench).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// `--loops` of each agent.
    #[arg(long, default_value_t = 1)]
    agent_loops: usize,
}

#[derive(clap::Args, Debug)]
struct ScenarioArgs {
    /// Which scenario.
    #[arg(value_enum, default_value_t = Which::All)]
    which: Which,
    /// Short run (under a minute): fewer steps, shorter, 2,000 idle connections.
    #[arg(long)]
    quick: bool,
    /// Also run classic and overhead with mutual TLS between the agents (steps
    /// `classic-mtls`, `overhead-mtls`, `cost-mtls`; certificates issued with openssl).
    #[arg(long)]
    tls: bool,
    /// Registry the agents use.
    #[arg(long, value_enum, default_value_t = RegistryKind::Embedded)]
    registry: RegistryKind,
    /// Where the report goes.
    #[arg(long, default_value = "target/bench-report")]
    out: PathBuf,
    /// Directory holding consumer-agent and provider-agent (default: next to bench).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// `--loops` of each agent.
    #[arg(long, default_value_t = 1)]
    agent_loops: usize,
    /// Override each step's warm-up (seconds).
    #[arg(long)]
    warmup_secs: Option<u64>,
    /// Override each step's measured time (seconds).
    #[arg(long)]
    duration_secs: Option<u64>,
    /// Override the idle scenario's connections.
    #[arg(long)]
    idle_connections: Option<usize>,
    /// The cost scenario's paired rounds (default 9, 3 with `--quick`): more rounds,
    /// a median less moved by a noisy machine.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    rounds: Option<u64>,
    /// The features the cost scenario measures, by name (`dubbo`, `rules`, `observe`,
    /// `mtls`; default: all, `mtls` only with `--tls`).
    #[arg(long, value_delimiter = ',')]
    features: Vec<String>,
}

#[derive(clap::Args, Debug)]
struct LoadArgs {
    /// The consumer-agent's address (its `--dubbo-listen` one with `--protocol dubbo`).
    #[arg(long, default_value = "127.0.0.1:20000")]
    target: SocketAddr,
    /// What to speak: the race's HTTP call, or Dubbo (hessian2) as a Dubbo consumer.
    #[arg(long, value_enum, default_value_t = load::Protocol::Http)]
    protocol: load::Protocol,
    /// Keep-alive connections (up to 10,000).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    connections: u64,
    /// Event loops the connections are spread over.
    #[arg(long, default_value_t = 1)]
    loops: usize,
    /// Seconds of warm-up, not measured.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Parameter strings: random letters and digits, or non-ASCII UTF-8 text.
    #[arg(long, value_enum, default_value_t = Params::Ascii)]
    params: Params,
    /// Number the provider appends to the parameter before hashing.
    #[arg(long)]
    salt: Option<i64>,
    /// A request unanswered this long is an error (milliseconds).
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Each connection's first request waits a random time below this (milliseconds),
    /// spreading the connections over the provider's latency instead of starting them
    /// in step (`bench scenario` uses the mock providers' latency; 0: all at once, as wrk).
    #[arg(long, default_value_t = 0)]
    stagger_ms: u64,
    /// Write a machine-readable report here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:20000")]
    listen: SocketAddr,
    /// Event loops.
    #[arg(long, default_value_t = 1)]
    loops: usize,
    /// Number appended to the parameter before hashing.
    #[arg(long)]
    salt: Option<i64>,
}

#[derive(clap::Args, Debug)]
struct ProviderArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:20880")]
    listen: SocketAddr,
    /// Sleep of each call, in milliseconds.
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
    /// Calls in flight at most (Dubbo's fixed pool); more get status 100.
    #[arg(long, default_value_t = 200)]
    threads: usize,
    /// Number appended to the argument before hashing.
    #[arg(long)]
    salt: Option<i64>,
    /// Event loops.
    #[arg(long, default_value_t = 1)]
    loops: usize,
    /// Virtual cores of the capacity model (0: none).
    #[arg(long, default_value_t = 0)]
    cores: usize,
    /// Virtual CPU microseconds each call needs on one core.
    #[arg(long, default_value_t = 0)]
    cpu_us: u64,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Provider(a) => {
            let opts = ProviderOpts {
                listen: a.listen,
                latency: Duration::from_millis(a.latency_ms),
                threads: a.threads,
                salt: a.salt,
                loops: a.loops,
                cores: a.cores,
                cpu_us: a.cpu_us,
            };
            match provider::spawn(opts) {
                Ok(p) => {
                    eprintln!("bench provider listening on {}", p.local_addr());
                    p.join();
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("bench provider: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Load(a) => {
            let opts = LoadOpts {
                target: a.target,
                connections: a.connections as usize,
                loops: a.loops,
                warmup: Duration::from_secs(a.warmup_secs),
                duration: Duration::from_secs(a.duration_secs),
                params: a.params,
                salt: a.salt,
                timeout: Duration::from_millis(a.timeout_ms),
                progress: true,
                protocol: a.protocol,
                stagger: Duration::from_millis(a.stagger_ms),
            };
            let report = match load::run(&opts) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("bench load: {e}");
                    return ExitCode::FAILURE;
                }
            };
            print!("{}", report.summary());
            if let Some(path) = a.json {
                let text = serde_json::to_string_pretty(&report.to_json()).unwrap_or_default();
                if let Err(e) = std::fs::write(&path, text) {
                    eprintln!("bench load: writing {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Cmd::Scenario(a) => {
            let mut opts = ScenarioOpts::new(a.which, a.quick);
            opts.registry = a.registry;
            opts.tls = a.tls;
            opts.out = a.out;
            opts.bin_dir = a.bin_dir;
            opts.agent_loops = a.agent_loops;
            if let Some(s) = a.warmup_secs {
                opts.warmup = Duration::from_secs(s);
            }
            if let Some(s) = a.duration_secs {
                opts.duration = Duration::from_secs(s);
            }
            if let Some(n) = a.idle_connections {
                opts.idle_connections = n;
            }
            opts.cost_rounds = a.rounds.map(|r| r as usize);
            opts.cost_features = a.features;
            let r = match scenario::run(&opts) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("bench scenario: {e}");
                    return ExitCode::FAILURE;
                }
            };
            print!("{}", report::table(&r));
            if let Err(e) = report::write_all(&r, &opts.out) {
                eprintln!("bench scenario: writing the report: {e}");
                return ExitCode::FAILURE;
            }
            eprintln!("report written to {}", opts.out.display());
            if r.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Soak(a) => {
            let mut opts = SoakOpts::new(Duration::from_secs(a.duration_secs));
            opts.connections = a.connections;
            opts.scenario.registry = a.registry;
            opts.scenario.out = a.out;
            opts.scenario.bin_dir = a.bin_dir;
            opts.scenario.agent_loops = a.agent_loops;
            let r = match soak::run(&opts) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("bench soak: {e}");
                    return ExitCode::FAILURE;
                }
            };
            print!("{}", soak::markdown(&r));
            if let Err(e) = soak::write_all(&r, &opts.scenario.out) {
                eprintln!("bench soak: writing the report: {e}");
                return ExitCode::FAILURE;
            }
            eprintln!("report written to {}", opts.scenario.out.display());
            if r.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::HttpEcho(a) => {
            let opts = EchoOpts {
                listen: a.listen,
                loops: a.loops,
                salt: a.salt,
                ..EchoOpts::default()
            };
            match echo::spawn(opts) {
                Ok(e) => {
                    eprintln!("bench http-echo listening on {}", e.local_addr());
                    e.join();
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("bench http-echo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
