//! `consumer-agent`: flags, logging, signals; the work is in the library.

use clap::Parser;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = agent_consumer::Config::parse();
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("consumer-agent: cannot install signal handlers: {e}");
            std::process::exit(1);
        }
    };
    let running = match agent_consumer::start(config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("consumer-agent: {e}");
            std::process::exit(1);
        }
    };
    // SIGHUP (a closed terminal, a log-rotation habit) must not stop a sidecar.
    if let Some(sig) = signals
        .forever()
        .inspect(|&s| {
            if s == SIGHUP {
                log::info!("SIGHUP: ignored (SIGTERM or SIGINT stops)");
            }
        })
        .find(|&s| s != SIGHUP)
    {
        log::info!("signal {sig}: stopping (in-flight requests finish first)");
    }
    running.stop();
    log::info!("stopped");
}
