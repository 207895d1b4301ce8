//! The `bench` command: mock provider, load generator, scenarios.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use bench::provider::{self, ProviderOpts};

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
    }
}
