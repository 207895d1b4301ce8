//! Handing established connections to a successor (`Ctx::detach`, `handover::Handoff`,
//! `handover::Arrivals`, `Ctx::adopt`): a client's connection moves from one reactor
//! to another between its requests, the bytes the first read but did not process go
//! with it, and the client sees one unbroken conversation.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use reactor::handover::{self, Arrival, Handoff, Offer, Offered, Takeover};
use reactor::{Builder, Config, Conn, ConnId, Ctx, Handler, LoopHandle, Reactor};

/// Answers each whole line with the reactor's mark before it; a partial line waits.
struct Lines {
    mark: u8,
    conns: Vec<ConnId>,
    /// Told how each detach went (the test waits for it).
    handed: mpsc::Sender<usize>,
}

enum Msg {
    /// Hand every connection to the successor.
    HandOff(Handoff),
    /// Take on one handed over.
    Adopt(Arrival),
}

impl Handler for Lines {
    type Tag = ();
    type Msg = Msg;
    type Timer = ();

    fn opened(&mut self, _cx: &mut Ctx<'_, Self>, conn: Conn<()>) {
        self.conns.push(conn.id);
    }

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
        let mut used = 0;
        while let Some(eol) = input[used..].iter().position(|&b| b == b'\n') {
            cx.write(conn.id, &[self.mark]);
            cx.write(conn.id, &input[used..used + eol + 1]);
            used += eol + 1;
        }
        used
    }

    fn message(&mut self, cx: &mut Ctx<'_, Self>, msg: Msg) {
        match msg {
            Msg::HandOff(handoff) => {
                let mut sent = 0;
                for id in std::mem::take(&mut self.conns) {
                    let conn = cx.detach(id).expect("detach an open, idle connection");
                    assert!(!cx.is_live(id), "a detached id is stale");
                    handoff
                        .send("lines", &conn.stream, &conn.input)
                        .expect("hand over");
                    sent += 1;
                }
                let _ = self.handed.send(sent);
            }
            Msg::Adopt(arrival) => {
                assert_eq!(arrival.name, "lines");
                cx.adopt(arrival.stream, (), arrival.input).expect("adopt");
            }
        }
    }
}

fn start(
    mark: u8,
    listen: impl FnOnce(Builder<()>) -> Builder<()>,
) -> (Reactor<Msg>, mpsc::Receiver<usize>) {
    let (tx, rx) = mpsc::channel();
    let builder = listen(Builder::new(Config {
        loops: 1,
        ..Config::default()
    }));
    let reactor = builder
        .start(move |_, _| Lines {
            mark,
            conns: Vec::new(),
            handed: tx.clone(),
        })
        .expect("start");
    (reactor, rx)
}

/// The old reactor's side of the exchange: its listener, and its loops told to hand
/// their connections over.
struct Old {
    listeners: Vec<TcpListener>,
    loops: Vec<LoopHandle<Msg>>,
}

impl Offered for Old {
    fn listeners(&mut self) -> std::io::Result<Vec<(String, Vec<TcpListener>)>> {
        let dups = self.listeners.iter().map(TcpListener::try_clone);
        Ok(vec![("lines".into(), dups.collect::<Result<_, _>>()?)])
    }
    fn ready(&mut self, handoff: Handoff) {
        for l in &self.loops {
            let _ = l.stop_accepting();
            let _ = l.send(Msg::HandOff(handoff.clone()));
        }
    }
}

fn line(r: &mut BufReader<TcpStream>) -> String {
    let mut s = String::new();
    r.read_line(&mut s).expect("a line");
    s
}

#[test]
fn a_connection_moves_between_requests_with_its_unread_bytes() {
    let dir = std::env::temp_dir().join(format!("handover-conns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("lines.sock");

    let (old, handed) = start(b'1', |b| b.listen("127.0.0.1:0".parse().expect("addr"), ()));
    let addr = old.local_addrs()[0];
    let client = TcpStream::connect(addr).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut w = client.try_clone().expect("clone");
    let mut r = BufReader::new(client);
    w.write_all(b"one\n").expect("write");
    assert_eq!(line(&mut r), "1one\n");
    // Half a request, read by the old reactor and left unprocessed.
    w.write_all(b"tw").expect("write");
    std::thread::sleep(Duration::from_millis(100));

    let server = handover::serve(
        Offer::bind(&path).expect("bind"),
        "handover",
        Duration::from_secs(5),
        Old {
            listeners: old.listeners().expect("listeners").remove(0),
            loops: old.handles().to_vec(),
        },
    )
    .expect("serve");
    let mut takeover = Takeover::connect(&path, Duration::from_secs(5)).expect("connect");
    let socks = takeover.take("lines").expect("lines");
    let (new, _) = start(b'2', |b| b.listen_inherited(socks, ()));
    let mut arrivals = takeover.ready(Duration::from_secs(5)).expect("ready");
    assert_eq!(
        handed.recv_timeout(Duration::from_secs(5)),
        Ok(1),
        "the old reactor handed its connection over"
    );
    let arrival = arrivals.recv().expect("recv").expect("a connection");
    assert_eq!(arrival.input, b"tw", "the unprocessed bytes come along");
    new.handles()[0]
        .send(Msg::Adopt(arrival))
        .expect("the new loop");
    server.stop();

    // The rest of the request, on the same connection, reaches the new reactor, which
    // answers it whole; so does the next one.
    w.write_all(b"o\n").expect("write");
    assert_eq!(line(&mut r), "2two\n");
    w.write_all(b"three\n").expect("write");
    assert_eq!(line(&mut r), "2three\n");

    // The old reactor holds nothing: dropping it closes nothing of the client's.
    old.stop();
    old.join();
    w.write_all(b"four\n").expect("write");
    assert_eq!(line(&mut r), "2four\n");
    drop(arrivals);
    new.stop();
    new.join();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn arrivals_end_when_the_old_side_lets_go() {
    let dir = std::env::temp_dir().join(format!("handover-conns-end-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("end.sock");
    let offer = Offer::bind(&path).expect("bind");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let successor = std::thread::spawn(move || {
        let mut t = Takeover::connect(&path, Duration::from_secs(5)).expect("connect");
        let _ = t.take("x");
        let mut arrivals = t.ready(Duration::from_secs(5)).expect("ready");
        let mut got = Vec::new();
        while let Some(a) = arrivals.recv().expect("recv") {
            got.push((a.name, a.input, a.stream.peer_addr().is_ok()));
        }
        got
    });
    let mut peer = offer
        .accept_timeout(Duration::from_secs(5))
        .expect("accept")
        .expect("a successor");
    peer.send(&[("x", std::slice::from_ref(&listener))])
        .expect("send");
    peer.wait_ready(Duration::from_secs(5)).expect("ready");
    let handoff = peer.confirm().expect("confirm");
    // Two connections, one with a few bytes already read, then the end.
    let addr = listener.local_addr().expect("addr");
    let a = TcpStream::connect(addr).expect("connect");
    let b = TcpStream::connect(addr).expect("connect");
    handoff.send("x", &a, b"").expect("send a");
    handoff.send("x", &b, b"abc\n").expect("send b");
    assert!(
        handoff.send("bad name", &a, b"").is_err(),
        "names have no spaces"
    );
    drop(handoff);
    let got = successor.join().expect("successor");
    assert_eq!(
        got,
        vec![
            ("x".to_owned(), Vec::new(), true),
            ("x".to_owned(), b"abc\n".to_vec(), true)
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
