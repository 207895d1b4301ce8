//! The admin port: `/metrics` (Prometheus text), `/healthz`, and `/registry` (what the
//! registry last said of each watched service, as JSON).
//!
//! Off the request path, so a plain blocking thread: one short request per connection.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// Binds the admin port and serves it on a thread of its own.
///
/// # Errors
/// The address could not be bound.
pub fn spawn(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    discovered: Arc<Discovered>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = serve(stream, &metrics, &discovered) {
                    log::debug!("admin request: {e}");
                }
            }
        })?;
    Ok(local)
}

fn serve(mut stream: TcpStream, metrics: &Metrics, discovered: &Discovered) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 2048];
    let mut len = 0;
    let path = loop {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => break req.path.unwrap_or("/").to_owned(),
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => return respond(&mut stream, 400, "text/plain", "bad request\n"),
        }
    };
    match path.as_str() {
        "/metrics" => respond(
            &mut stream,
            200,
            "text/plain; version=0.0.4",
            &metrics.render(),
        ),
        "/healthz" if metrics.has_upstream() => respond(&mut stream, 200, "text/plain", "ok\n"),
        "/healthz" => respond(
            &mut stream,
            503,
            "text/plain",
            "no provider-agent connected\n",
        ),
        "/registry" => respond(
            &mut stream,
            200,
            "application/json",
            &format!("{:#}\n", discovered.to_json()),
        ),
        _ => respond(
            &mut stream,
            404,
            "text/plain",
            "not found: try /metrics, /healthz or /registry\n",
        ),
    }
}

fn respond(stream: &mut TcpStream, status: u16, ctype: &str, body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}
