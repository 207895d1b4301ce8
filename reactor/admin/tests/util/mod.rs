//! Shared helpers for the admin server's tests: a server with a few routes on a port-0
//! loopback listener, one-shot clients, a `/healthz` asserter, and [`Pressure`], a crowd
//! of idle and slow clients held against the server.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use reactor_admin::{Builder, Config, Response, Server};

/// The longest any single wait in a test may take.
pub const LIMIT: Duration = Duration::from_secs(10);
/// Size of the `/big` answer: more than loopback socket buffers hold.
pub const BIG: usize = 32 * 1024 * 1024;

/// A server on 127.0.0.1, port 0, with `/metrics`, `/big` ([`BIG`] bytes) and a
/// healthy `/healthz`.
pub fn server(config: Config) -> Server {
    Builder::new(config)
        .health(|| Ok(()))
        .route("/metrics", || {
            Response::prometheus("# TYPE up gauge\nup 1\n")
        })
        .route("/big", || Response::text(200, vec![b'x'; BIG]))
        .start("127.0.0.1:0".parse().unwrap())
        .expect("start the admin server")
}

/// A connected client whose reads and writes time out after [`LIMIT`].
#[track_caller]
pub fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, LIMIT).unwrap_or_else(|e| panic!("connect: {e}"));
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.set_write_timeout(Some(LIMIT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// An answer: its status, head and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends `raw` on a new connection and reads to the end: the one answer.
#[track_caller]
pub fn exchange(addr: SocketAddr, raw: &[u8]) -> Answer {
    let mut s = client(addr);
    s.write_all(raw).expect("write the request");
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("read the answer");
    parse(&all).unwrap_or_else(|| panic!("not one answer: {:?}", String::from_utf8_lossy(&all)))
}

/// `GET path` on a new connection.
#[track_caller]
pub fn get(addr: SocketAddr, path: &str) -> Answer {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
}

/// Splits one whole answer.
pub fn parse(raw: &[u8]) -> Option<Answer> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(Answer {
        status,
        head,
        body: raw[end + 4..].to_vec(),
    })
}

/// Reads `n` answers, each with a Content-Length, from a kept-alive connection (and
/// nothing more).
#[track_caller]
pub fn read_answers(s: &mut TcpStream, n: usize) -> Vec<Answer> {
    let mut raw = Vec::new();
    let mut answers = Vec::new();
    let mut buf = [0u8; 4096];
    while answers.len() < n {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let mut answer = parse(&raw).expect("a head");
            let len: usize = answer
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .expect("a Content-Length");
            if raw.len() >= end + 4 + len {
                answer.body.truncate(len);
                answers.push(answer);
                raw.drain(..end + 4 + len);
                continue;
            }
        }
        let k = s.read(&mut buf).expect("read an answer");
        assert!(k > 0, "closed before {n} whole answers: {raw:?}");
        raw.extend_from_slice(&buf[..k]);
    }
    assert!(raw.is_empty(), "bytes past the answers: {raw:?}");
    answers
}

/// Reads one answer with a Content-Length from a kept-alive connection.
#[track_caller]
pub fn read_answer(s: &mut TcpStream) -> Answer {
    read_answers(s, 1).remove(0)
}

/// `GET /healthz` answers `200 ok` within `within`, connection included.
#[track_caller]
pub fn assert_healthy_within(addr: SocketAddr, within: Duration) {
    let t = Instant::now();
    let a = get(addr, "/healthz");
    let took = t.elapsed();
    assert_eq!((a.status, a.body_text().as_str()), (200, "ok\n"));
    assert!(took < within, "/healthz took {took:?}");
}

/// Whether the server closed `s` (end of stream or reset) within `within`; bytes it
/// still sends are read and dropped.
pub fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    drain(s, within).1
}

/// Reads `s` until the server closes it or `within` passes: how many bytes came, and
/// whether it closed (end of stream or reset).
pub fn drain(s: &mut TcpStream, within: Duration) -> (usize, bool) {
    let end = Instant::now() + within;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, false);
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (got, false)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return (got, true),
        }
    }
}

/// Idle and slow clients held against a server for as long as this lives: `idle`
/// connections that never send a byte, and one client sending a request a byte every
/// `slow_every`. Whichever the server closes is opened again at once, so the pressure
/// never lets up.
pub struct Pressure {
    stop: Arc<AtomicBool>,
    /// Idle connections currently open.
    pub idle_open: Arc<AtomicUsize>,
    /// Bytes the slow client sent.
    pub slow_bytes: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<()>>,
}

impl Pressure {
    pub fn start(addr: SocketAddr, idle: usize, slow_every: Duration) -> Pressure {
        let stop = Arc::new(AtomicBool::new(false));
        let idle_open = Arc::new(AtomicUsize::new(0));
        let slow_bytes = Arc::new(AtomicUsize::new(0));
        let (s, open) = (stop.clone(), idle_open.clone());
        let idlers = std::thread::spawn(move || hold_idle(addr, idle, &s, &open));
        let (s, sent) = (stop.clone(), slow_bytes.clone());
        let slow = std::thread::spawn(move || trickle(addr, slow_every, &s, &sent));
        Pressure {
            stop,
            idle_open,
            slow_bytes,
            threads: vec![idlers, slow],
        }
    }
}

impl Drop for Pressure {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Keeps `n` connections open that send nothing, replacing those the server closes.
fn hold_idle(addr: SocketAddr, n: usize, stop: &AtomicBool, open: &AtomicUsize) {
    let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    let mut buf = [0u8; 1024];
    while !stop.load(Ordering::SeqCst) {
        for slot in conns.iter_mut() {
            let gone = match slot {
                Some(s) => match s.read(&mut buf) {
                    Ok(_) => true,
                    Err(e) => e.kind() != ErrorKind::WouldBlock,
                },
                None => true,
            };
            if gone {
                *slot = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                    .ok()
                    .filter(|s| s.set_nonblocking(true).is_ok());
            }
        }
        open.store(conns.iter().flatten().count(), Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `GET /healthz` a byte every `every`, reconnecting when cut off.
fn trickle(addr: SocketAddr, every: Duration, stop: &AtomicBool, sent: &AtomicUsize) {
    let request = b"GET /healthz HTTP/1.1\r\nHost: slow\r\n\r\n";
    'connect: while !stop.load(Ordering::SeqCst) {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        for b in request {
            if s.write_all(&[*b]).is_err() {
                continue 'connect;
            }
            sent.fetch_add(1, Ordering::SeqCst);
            // Sleep in short steps, so a stop is not held up.
            let until = Instant::now() + every;
            while Instant::now() < until {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
