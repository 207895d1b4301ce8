//! The admin port: `/metrics` (Prometheus text), `/healthz`, and `/registry` (what the
//! registry last said of each watched service, as JSON).
//!
//! Off the request path, so plain blocking threads: one short request per connection,
//! a thread each, with a deadline for the whole request.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// How long a client has to send its whole request, and we to answer it.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Connections served at once; more are closed at once (each is done within
/// [`REQUEST_DEADLINE`] or so, so a legitimate client soon finds room).
const MAX_CONCURRENT: usize = 32;

/// Counts a connection being served for as long as it lives.
struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Binds the admin port and serves it: a thread accepting, and one per connection (at
/// most 32), each given 2 s for the whole request, so a slow client holds up no one
/// else.
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
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONCURRENT {
                    active.fetch_sub(1, Ordering::SeqCst);
                    log::debug!("admin: {MAX_CONCURRENT} connections busy; one refused");
                    continue;
                }
                let guard = Active(active.clone());
                let (metrics, discovered) = (metrics.clone(), discovered.clone());
                let spawned =
                    std::thread::Builder::new()
                        .name("admin-conn".into())
                        .spawn(move || {
                            let _guard = guard;
                            if let Err(e) = serve(stream, &metrics, &discovered) {
                                log::debug!("admin request: {e}");
                            }
                        });
                if let Err(e) = spawned {
                    log::warn!("admin: no thread for a connection: {e}");
                }
            }
        })?;
    Ok(local)
}

fn serve(mut stream: TcpStream, metrics: &Metrics, discovered: &Discovered) -> std::io::Result<()> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    stream.set_write_timeout(Some(REQUEST_DEADLINE))?;
    let mut buf = [0u8; 2048];
    let mut len = 0;
    let path = loop {
        // The whole request within the deadline, however it trickles in.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
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
