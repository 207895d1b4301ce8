//! `provider-agent`: flags, logging and signals around [`agent_provider::start`].

use clap::Parser;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = agent_provider::Config::parse();
    // Signals first, so a SIGTERM during start-up is not lost.
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            log::error!("installing signal handlers: {e}");
            std::process::exit(1);
        }
    };
    let agent = match agent_provider::start(config) {
        Ok(a) => a,
        Err(e) => {
            log::error!("starting provider-agent: {e}");
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
        log::info!("signal {sig}: shutting down");
    }
    agent.stop();
}
