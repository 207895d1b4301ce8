//! Shared helpers for the reactor's integration tests: loopback listeners on port 0,
//! clients with timeouts, asserters that poll with a deadline, and a reference echo
//! handler with backpressure.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use reactor::{Builder, Config, Conn, Ctx, Handler, Reactor};
pub use test_support::wait::assert_eventually;

/// The longest any single wait in a test may take.
pub const LIMIT: Duration = Duration::from_secs(20);

/// 127.0.0.1, port 0: the kernel picks a free port.
pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Waits for `counter` to reach `value` exactly (fails if it overshoots).
#[track_caller]
pub fn wait_count(what: &str, counter: &AtomicUsize, value: usize) {
    assert_eventually(what, LIMIT, || {
        let now = counter.load(Ordering::SeqCst);
        assert!(now <= value, "{what}: {now} > {value}");
        now == value
    });
}

/// The next item from a test channel, failing the test after [`LIMIT`].
#[track_caller]
pub fn recv<T>(rx: &Receiver<T>, what: &str) -> T {
    match rx.recv_timeout(LIMIT) {
        Ok(v) => v,
        Err(e) => panic!("no {what} within {LIMIT:?}: {e}"),
    }
}

/// Asserts nothing arrives on `rx` (used after a later sentinel already arrived).
#[track_caller]
pub fn assert_empty<T: std::fmt::Debug>(rx: &Receiver<T>, what: &str) {
    if let Ok(v) = rx.try_recv() {
        panic!("unexpected {what}: {v:?}");
    }
}

/// A blocking client with read and write timeouts, so a stuck test fails instead of
/// hanging.
#[track_caller]
pub fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.set_write_timeout(Some(LIMIT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Writes `msg` and reads back exactly as many bytes, asserting they match.
#[track_caller]
pub fn ping(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut back = vec![0; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

/// `n` bytes of consecutive little-endian u32s: any reordered, lost or duplicated
/// chunk shows, since no 4-byte word repeats.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n.div_ceil(4) as u32)
        .flat_map(u32::to_le_bytes)
        .take(n)
        .collect()
}

/// Stops the reactor and joins its threads when dropped, so a failing test still
/// releases its loops.
#[derive(Debug)]
pub struct Running<M: Send + 'static>(Option<Reactor<M>>);

impl<M: Send + 'static> Running<M> {
    pub fn new(r: Reactor<M>) -> Self {
        Running(Some(r))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs()[0]
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.0.as_ref().unwrap().local_addrs().to_vec()
    }

    pub fn reactor(&self) -> &Reactor<M> {
        self.0.as_ref().unwrap()
    }

    /// Stops gracefully and waits for the loops to exit.
    pub fn shutdown(mut self) {
        let r = self.0.take().unwrap();
        r.stop();
        r.join();
    }
}

impl<M: Send + 'static> Drop for Running<M> {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.stop();
            if !std::thread::panicking() {
                r.join();
            }
        }
    }
}

/// Counters an [`Echo`] keeps, shared with the test.
#[derive(Debug, Default)]
pub struct EchoStats {
    pub opened: AtomicUsize,
    pub closed: AtomicUsize,
    pub bytes: AtomicUsize,
    pub pauses: AtomicUsize,
    pub drains: AtomicUsize,
}

/// Echoes everything back; when a connection's output is congested it stops reading
/// it until [`Handler::drained`], so a client that does not read is pushed back on.
#[derive(Debug)]
pub struct Echo(pub Arc<EchoStats>);

impl Handler for Echo {
    type Tag = ();
    type Msg = ();
    type Timer = ();

    fn opened(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>) {
        self.0.opened.fetch_add(1, Ordering::SeqCst);
    }

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
        cx.write(conn.id, input);
        self.0.bytes.fetch_add(input.len(), Ordering::SeqCst);
        if cx.is_congested(conn.id) {
            self.0.pauses.fetch_add(1, Ordering::SeqCst);
            cx.pause_reading(conn.id);
        }
        input.len()
    }

    fn drained(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>) {
        self.0.drains.fetch_add(1, Ordering::SeqCst);
        cx.resume_reading(conn.id);
    }

    fn closed(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, _: reactor::CloseReason) {
        self.0.closed.fetch_add(1, Ordering::SeqCst);
    }
}

/// An echo reactor on port 0 with `config`.
pub fn start_echo(config: Config) -> (Running<()>, Arc<EchoStats>) {
    let stats = Arc::new(EchoStats::default());
    let s = stats.clone();
    let r = Builder::new(config)
        .listen(any_port(), ())
        .start(move |_, _| Echo(s.clone()))
        .expect("start echo reactor");
    (Running::new(r), stats)
}
