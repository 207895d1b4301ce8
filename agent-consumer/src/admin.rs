//! The admin port: `/metrics` (Prometheus text), `/healthz`, and `/registry` (what the
//! registry last said of each watched service, as JSON).
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

/// Binds the admin port and serves it on one event-loop thread (`consumer-admin-0`,
/// [`reactor_admin`]): each connection has 2 s from its accept for its request, at most
/// 1,024 are held (the oldest closed first), so no number of slow or idle clients keeps
/// `/healthz` from answering. The server stops when the returned handle is dropped.
///
/// # Errors
/// The address could not be bound.
pub fn spawn(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    discovered: Arc<Discovered>,
) -> std::io::Result<Server> {
    let health = metrics.clone();
    Builder::new(Config::named("consumer-admin"))
        .health(move || {
            if health.has_upstream() {
                Ok(())
            } else {
                Err("no provider-agent connected".into())
            }
        })
        .route("/metrics", move || Response::prometheus(metrics.render()))
        .route("/registry", move || {
            Response::json(200, format!("{:#}\n", discovered.to_json()))
        })
        .start(addr)
}
