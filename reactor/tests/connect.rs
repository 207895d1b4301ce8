//! Outbound connects: success, refused, and timed out.

mod util;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{channel, Sender};
use std::time::{Duration, Instant};

use reactor::{Builder, CloseReason, Config, Conn, Ctx, Handler, LoopHandle};
use socket2::{Domain, Socket, Type};
use util::*;

/// Where to connect, and the connect timeout.
type Dial = (SocketAddr, Option<Duration>);

#[derive(Debug)]
enum Seen {
    ConnectErr(std::io::ErrorKind),
    Opened,
    Closed(CloseReason),
}

/// Connects where it is told to, with the given timeout, and reports what happens.
#[derive(Debug)]
struct Dialer(Sender<Seen>);

impl Handler for Dialer {
    type Tag = ();
    type Msg = Dial;
    type Timer = ();

    fn message(&mut self, cx: &mut Ctx<'_, Self>, (addr, timeout): Self::Msg) {
        match cx.connect(addr, (), timeout) {
            Ok(id) => {
                // Written before the connect completes: waits for the open.
                assert!(cx.write(id, b"hello"));
            }
            Err(e) => self.0.send(Seen::ConnectErr(e.kind())).unwrap(),
        }
    }

    fn opened(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>) {
        assert!(cx.is_open(conn.id));
        self.0.send(Seen::Opened).unwrap();
        cx.close(conn.id);
    }

    fn data(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, input: &[u8]) -> usize {
        input.len()
    }

    fn closed(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, reason: CloseReason) {
        self.0.send(Seen::Closed(reason)).unwrap();
    }
}

fn start() -> (
    Running<Dial>,
    LoopHandle<Dial>,
    std::sync::mpsc::Receiver<Seen>,
) {
    let (tx, rx) = channel();
    let r = Builder::<()>::new(Config::default())
        .start(move |_, _| Dialer(tx.clone()))
        .unwrap();
    let h = r.handles()[0].clone();
    (Running::new(r), h, rx)
}

#[test]
fn connect_opens_and_buffered_writes_go_out() {
    let (_r, h, rx) = start();
    let listener = TcpListener::bind(any_port()).unwrap();
    h.send((listener.local_addr().unwrap(), Some(LIMIT)))
        .unwrap();
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"hello");
    assert!(matches!(recv(&rx, "open"), Seen::Opened));
    assert!(matches!(
        recv(&rx, "close"),
        Seen::Closed(CloseReason::Local)
    ));
}

#[test]
fn connect_to_a_closed_port_is_refused() {
    let (_r, h, rx) = start();
    let addr = {
        let l = TcpListener::bind(any_port()).unwrap();
        l.local_addr().unwrap()
    };
    h.send((addr, Some(LIMIT))).unwrap();
    match recv(&rx, "connect result") {
        Seen::Closed(CloseReason::ConnectFailed(kind)) => {
            assert_eq!(kind, std::io::ErrorKind::ConnectionRefused)
        }
        Seen::ConnectErr(kind) => {
            panic!("connect failed at once ({kind:?}) instead of reporting it in closed")
        }
        other => panic!("expected ConnectFailed(ConnectionRefused), got {other:?}"),
    }
}

/// Loopback only: a listener that never accepts, with its accept queue full, drops
/// further SYNs (Linux), so a connect to it hangs until its timeout.
#[test]
fn connect_to_a_full_backlog_times_out() {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.bind(&any_port().into()).unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut filler = Vec::new();
    let mut full = false;
    for _ in 0..64 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => filler.push(s),
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    if !full {
        eprintln!("the kernel accepted 64 connects on a backlog-0 listener: cannot make a connect hang on loopback; skipping");
        return;
    }
    let (_r, h, rx) = start();
    let started = Instant::now();
    h.send((addr, Some(Duration::from_millis(150)))).unwrap();
    match recv(&rx, "connect result") {
        Seen::Closed(CloseReason::ConnectTimeout) => {}
        other => panic!("expected ConnectTimeout, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(140) && took < Duration::from_secs(5),
        "timed out after {took:?}"
    );
    drop(sock);
}
