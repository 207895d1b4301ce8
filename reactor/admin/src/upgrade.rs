//! Replacing a running agent's binary from the command line (`systemctl reload`, or
//! `kill -USR2`): [`start_successor`] starts the binary now at this program's path with
//! the same flags and `--upgrade-from`, and the successor takes the listeners over
//! through [`reactor::handover`]; [`notify_systemd`] tells a `Type=notify` unit when
//! an agent is ready and, after an upgrade, which process is now its main one. Both
//! agents' `main` use them.

use std::ffi::OsString;
use std::path::Path;

/// SIGUSR2: starts this program again (the binary now at its path: a new version
/// once installed) with the same flags and `--upgrade-from` this agent's
/// `--upgrade-socket`; it takes the listeners over, and this process drains. If it
/// fails, this one serves on (and says so).
pub fn start_successor(name: &str, socket: Option<&Path>) {
    let Some(socket) = socket else {
        log::warn!("SIGUSR2: no --upgrade-socket, so no upgrade; ignored");
        return;
    };
    let mut args = std::env::args_os();
    let Some(program) = args.next() else {
        log::error!("SIGUSR2: this program's path is unknown; no upgrade");
        return;
    };
    let mut kept: Vec<OsString> = Vec::new();
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        if a == "--upgrade-from" {
            skip_value = true;
            continue;
        }
        if a.to_str().is_some_and(|s| s.starts_with("--upgrade-from=")) {
            continue;
        }
        kept.push(a);
    }
    let child = std::process::Command::new(&program)
        .args(&kept)
        .arg("--upgrade-from")
        .arg(socket)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            log::error!(
                "SIGUSR2: starting {}: {e}; serving on",
                Path::new(&program).display()
            );
            return;
        }
    };
    log::info!(
        "SIGUSR2: started the new {name} (pid {}) to take over",
        child.id()
    );
    let waiter = std::thread::Builder::new()
        .name("upgrade-wait".into())
        .spawn(move || match child.wait() {
            Ok(st) if !st.success() => {
                log::error!("the new process exited ({st}) before taking over; serving on")
            }
            Ok(_) => {}
            Err(e) => log::warn!("waiting for the new process: {e}"),
        });
    if let Err(e) = waiter {
        log::warn!("no thread to watch the new process: {e}");
    }
}

/// Tells systemd (`Type=notify`, `NotifyAccess=all`) the agent is ready and, after
/// an upgrade, that this process is now the service's main one.
pub fn notify_systemd(upgraded: bool) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let state = if upgraded {
        format!("MAINPID={}\nREADY=1\n", std::process::id())
    } else {
        "READY=1\n".to_owned()
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return log::warn!("sd_notify: {e}"),
    };
    let sent = match path.to_str().and_then(|p| p.strip_prefix('@')) {
        #[cfg(target_os = "linux")]
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
                .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
        }
        #[cfg(not(target_os = "linux"))]
        Some(_) => return,
        None => sock.send_to(state.as_bytes(), &path),
    };
    if let Err(e) = sent {
        log::warn!("sd_notify: {e}");
    }
}
