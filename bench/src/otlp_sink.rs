//! A trivial OTLP/HTTP collector for the bench: it accepts each POST, reads its body,
//! answers 200 and discards it, so the agents' span export costs what it costs against
//! a collector that keeps up (`overhead-observe`). Like a real collector it keeps each
//! connection for the next request (a thread per connection).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The sink: a thread accepting on a loopback port, stopped on drop.
#[derive(Debug)]
pub struct OtlpSink {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    posts: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl OtlpSink {
    /// Starts the sink on a free loopback port.
    ///
    /// # Errors
    /// No port could be bound, or no thread spawned.
    pub fn start() -> io::Result<OtlpSink> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let posts = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), posts.clone());
        let thread = std::thread::Builder::new()
            .name("otlp-sink".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.load(Relaxed) {
                        return;
                    }
                    if let Ok(mut c) = conn {
                        let p = p.clone();
                        let _ = std::thread::Builder::new()
                            .name("otlp-sink-conn".into())
                            .spawn(move || {
                                while serve(&mut c).is_ok() {
                                    p.fetch_add(1, Relaxed);
                                }
                            });
                    }
                }
            })?;
        Ok(OtlpSink {
            addr,
            stop,
            posts,
            thread: Some(thread),
        })
    }

    /// The URL to give the agents' `--otlp-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// POSTs answered so far.
    pub fn posts(&self) -> u64 {
        self.posts.load(Relaxed)
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)); // wakes it
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request (head, then `Content-Length` bytes) and answers 200, keeping the
/// connection. Requests are not pipelined (the agents wait for each answer), so
/// nothing read past a request's body is expected.
fn serve(c: &mut TcpStream) -> io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    let (head_end, len) = loop {
        let n = c.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(buf.get(..i).unwrap_or_default()).to_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (i + 4, len);
        }
        if buf.len() > 64 * 1024 {
            return Err(io::ErrorKind::InvalidData.into());
        }
    };
    let mut have = buf.len().saturating_sub(head_end);
    while have < len {
        let n = c.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
    }
    c.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_posts_and_stops() {
        let sink = OtlpSink::start().unwrap();
        let mut c = TcpStream::connect(sink.addr).unwrap();
        c.write_all(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap();
        // Answered, and the connection kept for the next request.
        for _ in 0..2 {
            let mut answer = [0u8; 512];
            let n = c.read(&mut answer).unwrap();
            let answer = String::from_utf8_lossy(&answer[..n]);
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            c.write_all(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
                .unwrap();
        }
        assert!(sink.endpoint().ends_with("/v1/traces"));
        drop(sink);
    }
}
