//! The admin port: `/metrics` (Prometheus text), `/healthz`, `/registry` (what the
//! registry last said of each watched service, as JSON) and `/rules` (the traffic rules
//! in force, and since when).
//!
//! Off the request path: the shared admin server ([`reactor_admin`]) on its own thread,
//! which answers `/healthz` itself (200 while some provider-agent is connected, else
//! 503) and these routes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use reactor_admin::{Builder, Config, Response, Server};
use registry::Instance;
use serde_json::{json, Value as Json};

use crate::metrics::Metrics;

/// The instance lists the registry last delivered, by service, for `/registry`. Written
/// by the registry's thread on each change, read by the admin thread: never touched on
/// the request path.
#[derive(Debug, Default)]
pub struct Discovered {
    lists: Mutex<BTreeMap<String, Vec<Instance>>>,
}

impl Discovered {
    /// `service`'s last list, if the registry gave one.
    pub fn get(&self, service: &str) -> Option<Vec<Instance>> {
        self.lists.lock().ok()?.get(service).cloned()
    }

    /// Records `service`'s whole new list.
    pub fn set(&self, service: &str, list: &[Instance]) {
        if let Ok(mut lists) = self.lists.lock() {
            lists.insert(service.to_owned(), list.to_vec());
        }
    }

    /// Forgets `service` (no longer watched).
    pub fn forget(&self, service: &str) {
        if let Ok(mut lists) = self.lists.lock() {
            lists.remove(service);
        }
    }

    /// `{"<service>": [{"addr", "weight", "variants": [{"version", "group"}], "meta"}]}`;
    /// a watched service the registry has not answered for yet is absent.
    pub fn to_json(&self) -> Json {
        let Ok(lists) = self.lists.lock() else {
            return json!({});
        };
        let services = lists.iter().map(|(service, list)| {
            let instances: Vec<Json> = list
                .iter()
                .map(|i| {
                    let variants: Vec<Json> = i
                        .variants()
                        .iter()
                        .map(|v| json!({"version": v.version, "group": v.group}))
                        .collect();
                    json!({"addr": i.addr, "weight": i.weight, "variants": variants, "meta": i.meta})
                })
                .collect();
            (service.clone(), Json::Array(instances))
        });
        Json::Object(services.collect())
    }
}

/// The traffic rules in force, by service, for `/rules` and `/metrics`: written by the
/// discovery thread when rules change, read by the admin thread.
#[derive(Debug, Default)]
pub struct RulesInForce {
    state: Mutex<RulesState>,
}

#[derive(Debug, Default)]
struct RulesState {
    /// Service -> (the document in force, parsed as JSON; since, Unix seconds).
    services: BTreeMap<String, (Json, u64)>,
    applied: u64,
    rejected: u64,
    /// The last refusal: service and why.
    last_error: Option<(String, String)>,
}

impl RulesInForce {
    /// `service`'s new rules document (`None`: it has none) is in force.
    pub fn applied(&self, service: &str, text: Option<&str>) {
        if let Ok(mut s) = self.state.lock() {
            s.applied += 1;
            match text {
                Some(t) => {
                    let doc = serde_json::from_str(t).unwrap_or(Json::Null);
                    let since = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    s.services.insert(service.to_owned(), (doc, since));
                }
                None => {
                    s.services.remove(service);
                }
            }
        }
    }

    /// `service`'s new document was refused for `why`; the last good one stays.
    pub fn rejected(&self, service: &str, why: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.rejected += 1;
            s.last_error = Some((service.to_owned(), why.to_owned()));
        }
    }

    /// `{"services": {"<service>": {"rules": ..., "since": <unix s>}}, "last_error": ...}`.
    pub fn to_json(&self) -> Json {
        let Ok(s) = self.state.lock() else {
            return json!({});
        };
        let services: serde_json::Map<String, Json> = s
            .services
            .iter()
            .map(|(k, (doc, since))| (k.clone(), json!({"rules": doc, "since": since})))
            .collect();
        let last_error = s
            .last_error
            .as_ref()
            .map(|(svc, why)| json!({"service": svc, "error": why}));
        json!({"services": services, "last_error": last_error})
    }

    /// Its counters in Prometheus text.
    pub fn render(&self) -> String {
        let (applied, rejected) = self
            .state
            .lock()
            .map_or((0, 0), |s| (s.applied, s.rejected));
        let mut w = codec::prometheus::Writer::with_capacity(512);
        w.counter(
            "consumer_rules_applied_total",
            "Traffic rule documents put in force (or removed).",
            applied,
        );
        w.counter(
            "consumer_rules_rejected_total",
            "Traffic rule documents refused as invalid; the last good one stayed in force.",
            rejected,
        );
        w.finish()
    }
}

/// Binds the admin port and serves it on one event-loop thread (`consumer-admin-0`,
/// [`reactor_admin`]): each connection has 2 s from its accept for its request, at most
/// 1,024 are held (the oldest closed first), so no number of slow or idle clients keeps
/// `/healthz` from answering. The server stops when the returned handle is dropped.
///
/// With `inherited` sockets (a binary upgrade), serves on them instead of binding.
///
/// # Errors
/// The address could not be bound.
pub fn spawn(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    discovered: Arc<Discovered>,
    rules: Arc<RulesInForce>,
    inherited: Option<Vec<std::net::TcpListener>>,
) -> std::io::Result<Server> {
    let health = metrics.clone();
    let builder = Builder::new(Config::named("consumer-admin"))
        .health(move || {
            if health.has_upstream() {
                Ok(())
            } else {
                Err("no provider-agent connected".into())
            }
        })
        .route("/metrics", {
            let rules = rules.clone();
            move || Response::prometheus(metrics.render() + &rules.render())
        })
        .route("/registry", move || {
            Response::json(200, format!("{:#}\n", discovered.to_json()))
        })
        .route("/rules", move || {
            Response::json(200, format!("{:#}\n", rules.to_json()))
        });
    // Taken over from the process this one replaces (`--upgrade-from`), or bound.
    match inherited {
        Some(socks) => builder.start_inherited(socks),
        None => builder.start(addr),
    }
}
