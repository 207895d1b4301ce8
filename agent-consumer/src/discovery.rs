//! Zero-config discovery: a service is watched in the registry from the first call
//! that names it, on any loop.
//!
//! The loops ask [`Discovery::subscribe`] (once per service and loop: a short lock, on
//! a loop's first call of a service only); a thread of its own opens the registry
//! watch, and every list the registry delivers goes to every loop as
//! [`LoopMsg::Instances`] (and to the admin port's `/registry`). A service the registry
//! lists nobody for is forgotten again (unless named with `--service`), and the number
//! watched at once is bounded (`--max-services`): callers naming ever new interfaces
//! make the agent neither watch nor remember without end.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use reactor::LoopHandle;

use crate::admin::{Discovered, RulesInForce};
use crate::loop_handler::LoopMsg;
use crate::rules::Rules;

/// Why a service cannot be watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `--max-services` services are watched already.
    TooMany(usize),
    /// Not a name the registry takes.
    BadName(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::TooMany(n) => write!(
                f,
                "{n} services are watched already (consumer-agent --max-services)"
            ),
            Refused::BadName(e) => write!(f, "not a service name the registry takes: {e}"),
        }
    }
}

/// The services watched, shared by the loops; the watches live on a thread of their own.
#[derive(Debug)]
pub(crate) struct Discovery {
    watched: Mutex<HashSet<String>>,
    /// `--service`: watched from the start, never forgotten.
    kept: HashSet<String>,
    max: usize,
    requests: Sender<Request>,
}

/// What the loops ask of the watching thread.
#[derive(Debug)]
pub(crate) enum Request {
    /// Watch a service.
    Watch(String),
    /// Stop watching it.
    Forget(String),
}

impl Discovery {
    /// The shared side, for the loops, and the receiving end of its requests, for
    /// [`spawn`] once the loops run.
    pub(crate) fn new(max: usize, kept: &[String]) -> (Arc<Discovery>, Receiver<Request>) {
        let (requests, rx) = mpsc::channel();
        let discovery = Arc::new(Discovery {
            watched: Mutex::new(HashSet::new()),
            kept: kept.iter().cloned().collect(),
            max,
            requests,
        });
        (discovery, rx)
    }

    /// Stops watching `service`, which the registry lists nobody for, unless it is one
    /// of `--service`: the next call naming it watches it again.
    pub(crate) fn forget(&self, service: &str) {
        if self.kept.contains(service) {
            return;
        }
        let mut watched = self
            .watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if watched.remove(service) {
            let _ = self.requests.send(Request::Forget(service.to_owned()));
        }
    }

    /// Watches `service` from now on, if it is not watched already.
    ///
    /// # Errors
    /// [`Refused`] for a name the registry does not take, or past `--max-services`.
    pub(crate) fn subscribe(&self, service: &str) -> Result<(), Refused> {
        registry::validate_service(service).map_err(|e| Refused::BadName(e.to_string()))?;
        let mut watched = self
            .watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if watched.contains(service) {
            return Ok(());
        }
        if watched.len() >= self.max {
            return Err(Refused::TooMany(watched.len()));
        }
        watched.insert(service.to_owned());
        let _ = self.requests.send(Request::Watch(service.to_owned()));
        Ok(())
    }
}

/// Starts the watching thread: it opens a watch for each requested service and sends
/// every list to `loops`; it ends (dropping the watches) once every [`Discovery`] is
/// dropped.
pub(crate) fn spawn(
    registry: registry::Registry,
    requests: Receiver<Request>,
    loops: Vec<LoopHandle<LoopMsg>>,
    discovered: Arc<Discovered>,
    rules: Arc<RulesInForce>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("consumer-discovery".into())
        .spawn(move || watch_requested(&registry, &requests, &loops, &discovered, &rules))
}

/// Watches `service`'s traffic rules: each document is parsed and validated (against
/// the service's last instance list) here, off the loops; a good one goes to every loop,
/// a bad one is logged and counted, and the last good one stays in force.
fn watch_rules(
    registry: &registry::Registry,
    service: &str,
    loops: &[LoopHandle<LoopMsg>],
    discovered: &Arc<Discovered>,
    in_force: &Arc<RulesInForce>,
) -> Result<registry::Watch, registry::Error> {
    let (handles, seen, in_force, name) = (
        loops.to_vec(),
        discovered.clone(),
        in_force.clone(),
        service.to_owned(),
    );
    registry.watch_rules(service, move |doc| {
        let rules = match doc.as_deref() {
            None => None,
            Some(text) => match Rules::parse(text, seen.get(&name).as_deref()) {
                Ok(r) => Some(Arc::new(r)),
                Err(why) => {
                    log::warn!("{name}: traffic rules refused, the last good ones stay: {why}");
                    in_force.rejected(&name, &why);
                    return;
                }
            },
        };
        in_force.applied(&name, doc.as_deref());
        for h in &handles {
            let _ = h.send(LoopMsg::Rules(name.clone(), rules.clone()));
        }
    })
}

/// The watching thread: one registry watch per requested service, kept until the
/// request channel closes.
fn watch_requested(
    registry: &registry::Registry,
    requests: &Receiver<Request>,
    loops: &[LoopHandle<LoopMsg>],
    discovered: &Arc<Discovered>,
    in_force: &Arc<RulesInForce>,
) {
    let mut watches = HashMap::new();
    for request in requests {
        let service = match request {
            Request::Watch(service) => service,
            Request::Forget(service) => {
                watches.remove(&service);
                discovered.forget(&service);
                continue;
            }
        };
        let (handles, seen, name) = (loops.to_vec(), discovered.clone(), service.clone());
        let watch = registry.watch(&service, move |list| {
            seen.set(&name, &list);
            for h in &handles {
                let _ = h.send(LoopMsg::Instances(name.clone(), list.clone()));
            }
        });
        match watch {
            Ok(w) => {
                log::debug!("watching {service} in the registry");
                let rules = match watch_rules(registry, &service, loops, discovered, in_force) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        log::warn!("cannot watch the traffic rules of {service}: {e}");
                        None
                    }
                };
                watches.insert(service, (w, rules));
            }
            Err(e) => {
                // The loops hold the calls until their timeouts; an empty list now
                // answers them at once.
                log::warn!("cannot watch {service}: {e}");
                for h in loops {
                    let _ = h.send(LoopMsg::Instances(service.clone(), Vec::new()));
                }
            }
        }
    }
}
