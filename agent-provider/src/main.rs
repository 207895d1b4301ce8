//! `provider-agent`: flags, logging and signals around [`agent_provider::start`].

use clap::Parser;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use signal_hook::iterator::Signals;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = agent_provider::Config::parse();
    let upgrade_socket = config.upgrade_socket.clone();
    let upgrading = config.upgrade_from.is_some();
    // Signals first, so a SIGTERM during start-up is not lost.
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR2]) {
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
    // A new process took the listeners over: stop waiting for signals, drain, exit.
    let handle = signals.handle();
    agent.when_handed_over(move || handle.close());
    // After an upgrade, once the old process let go (this one is registered).
    agent.when_serving(move || reactor_admin::upgrade::notify_systemd(upgrading));
    let mut stop_signal = None;
    for sig in signals.forever() {
        match sig {
            // SIGHUP (a closed terminal, a log-rotation habit) must not stop a sidecar.
            SIGHUP => log::info!("SIGHUP: ignored (SIGTERM or SIGINT stops)"),
            SIGUSR2 => {
                reactor_admin::upgrade::start_successor("provider-agent", upgrade_socket.as_deref())
            }
            other => {
                stop_signal = Some(other);
                break;
            }
        }
    }
    match stop_signal {
        Some(sig) => log::info!("signal {sig}: shutting down"),
        None => log::info!("handed over to a new process: draining"),
    }
    agent.stop();
}
