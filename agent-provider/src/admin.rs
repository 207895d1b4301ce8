//! The admin HTTP endpoint: `GET /healthz` and `GET /metrics`.
//!
//! Off the hot path by design: one plain thread with a blocking listener, one request
//! per connection, so it shares nothing with the event loops but the metrics atomics.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::metrics::Metrics;

/// A running admin server.
#[derive(Debug)]
pub(crate) struct Admin {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Admin {
    /// Binds `addr` and serves in a new thread.
    pub(crate) fn spawn(addr: SocketAddr, metrics: Metrics) -> io::Result<Admin> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("provider-agent-admin".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if flag.load(Ordering::Acquire) {
                        break;
                    }
                    match stream {
                        Ok(s) => {
                            if let Err(e) = serve(s, &metrics) {
                                log::debug!("admin request: {e}");
                            }
                        }
                        Err(e) => {
                            log::warn!("admin accept: {e}");
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            })?;
        Ok(Admin {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the thread (wakes its blocking accept with a connection of our own).
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(mut s: TcpStream, metrics: &Metrics) -> io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        let Some(free) = buf.get_mut(n..) else { break };
        let k = s.read(free)?;
        if k == 0 {
            break;
        }
        n += k;
        if buf
            .get(..n)
            .is_some_and(|b| b.windows(4).any(|w| w == b"\r\n\r\n"))
        {
            break;
        }
    }
    let head = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (code, ctype, body) = match (method, path) {
        ("GET", "/healthz") if metrics.provider_up() => ("200 OK", "text/plain", "ok\n".to_owned()),
        ("GET", "/healthz") => (
            "503 Service Unavailable",
            "text/plain",
            "provider not connected\n".to_owned(),
        ),
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let resp = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes())
}
