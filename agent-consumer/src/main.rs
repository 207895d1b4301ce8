//! `consumer-agent`: flags, logging, signals; the work is in the library.

use clap::Parser;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use signal_hook::iterator::Signals;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = agent_consumer::Config::parse();
    let upgrade_socket = config.upgrade_socket.clone();
    let upgrading = config.upgrade_from.is_some();
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR2]) {
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
    // A new process took the listeners over: stop waiting for signals, drain, exit.
    let handle = signals.handle();
    running.when_handed_over(move || handle.close());
    reactor_admin::upgrade::notify_systemd(upgrading);
    let mut stop_signal = None;
    for sig in signals.forever() {
        match sig {
            // SIGHUP (a closed terminal, a log-rotation habit) must not stop a sidecar.
            SIGHUP => log::info!("SIGHUP: ignored (SIGTERM or SIGINT stops)"),
            SIGUSR2 => {
                reactor_admin::upgrade::start_successor("consumer-agent", upgrade_socket.as_deref())
            }
            other => {
                stop_signal = Some(other);
                break;
            }
        }
    }
    match stop_signal {
        Some(sig) => log::info!("signal {sig}: stopping (in-flight requests finish first)"),
        None => log::info!("handed over to a new process: draining"),
    }
    running.stop();
    log::info!("stopped");
}
