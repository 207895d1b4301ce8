//! Half-close: a peer's end of input reaches the handler, which may keep writing; our
//! own FIN follows the buffered output; the forwarder relays half-closes both ways.

mod util;

#[path = "../examples/forward.rs"]
mod forward;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::sync::mpsc::{channel, Sender};
use std::time::Duration;

use reactor::{Builder, CloseReason, Config, Conn, Ctx, EndOfInput, Handler};
use util::*;

/// Collects a whole request until the client's FIN, then answers with its length and
/// shuts down its sending side: the classic "request, half-close, response" exchange.
struct CountToEnd {
    seen: usize,
    closes: Sender<CloseReason>,
    after_eof_write: Sender<bool>,
}

impl Handler for CountToEnd {
    type Tag = ();
    type Msg = ();
    type Timer = ();

    fn data(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, input: &[u8]) -> usize {
        self.seen += input.len();
        input.len()
    }

    fn end_of_input(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>) -> EndOfInput {
        cx.write(conn.id, format!("{} bytes", self.seen).as_bytes());
        cx.shutdown_write(conn.id);
        // Our side is shutting down: a later write is refused.
        self.after_eof_write
            .send(cx.write(conn.id, b"late"))
            .unwrap();
        EndOfInput::KeepOpen
    }

    fn closed(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, reason: CloseReason) {
        self.closes.send(reason).unwrap();
    }
}

#[test]
fn answers_after_the_peers_half_close() {
    let (closes, closed_rx) = channel();
    let (late, late_rx) = channel();
    let r = Running::new(
        Builder::new(Config::default())
            .listen(any_port(), ())
            .start(move |_, _| CountToEnd {
                seen: 0,
                closes: closes.clone(),
                after_eof_write: late.clone(),
            })
            .unwrap(),
    );
    let mut c = client(r.addr());
    c.write_all(&pattern(100_000)).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "100000 bytes");
    assert!(!recv(&late_rx, "the late write's result"));
    assert_eq!(recv(&closed_rx, "the close"), CloseReason::PeerClosed);
    r.shutdown();
}

/// Greets, shuts down its sending side at once, and keeps counting what the peer sends.
struct GreetAndListen {
    got: Sender<Vec<u8>>,
    closes: Sender<CloseReason>,
}

impl Handler for GreetAndListen {
    type Tag = ();
    type Msg = ();
    type Timer = ();

    fn opened(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>) {
        cx.write(conn.id, b"hello, then FIN");
        cx.shutdown_write(conn.id);
    }

    fn data(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, input: &[u8]) -> usize {
        self.got.send(input.to_vec()).unwrap();
        input.len()
    }

    fn closed(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, reason: CloseReason) {
        self.closes.send(reason).unwrap();
    }
}

#[test]
fn keeps_reading_after_shutting_its_own_side() {
    let (got, got_rx) = channel();
    let (closes, closed_rx) = channel();
    let r = Running::new(
        Builder::new(Config::default())
            .listen(any_port(), ())
            .start(move |_, _| GreetAndListen {
                got: got.clone(),
                closes: closes.clone(),
            })
            .unwrap(),
    );
    let mut c = client(r.addr());
    let mut greeting = String::new();
    c.read_to_string(&mut greeting).unwrap(); // ends at the server's FIN
    assert_eq!(greeting, "hello, then FIN");
    // The server's receiving side is still open.
    c.write_all(b"still listening?").unwrap();
    let mut heard = Vec::new();
    while heard.len() < 16 {
        heard.extend(recv(&got_rx, "data after the server's FIN"));
    }
    assert_eq!(heard, b"still listening?");
    assert_empty(&closed_rx, "a close before the client finished");
    drop(c);
    assert_eq!(recv(&closed_rx, "the close"), CloseReason::PeerClosed);
    r.shutdown();
}

/// The default answer to end of input still closes, after the reply is written.
#[test]
fn closes_after_end_of_input_by_default() {
    let (echo, _) = start_echo(Config::default());
    let mut c = client(echo.addr());
    c.write_all(b"last words").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"last words");
    echo.shutdown();
}

#[test]
fn forwarder_relays_half_closes_both_ways() {
    // An upstream that reads a whole request to its end, then answers and closes.
    let upstream = TcpListener::bind(any_port()).unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = upstream.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut request = Vec::new();
        s.read_to_end(&mut request).unwrap();
        s.write_all(format!("got {} bytes", request.len()).as_bytes())
            .unwrap();
    });
    let fwd = Running::new(forward::start(any_port(), up_addr, Config::default()).unwrap());
    let mut c = client(fwd.addr());
    c.write_all(&pattern(300_000)).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "got 300000 bytes");
    server.join().unwrap();
    fwd.shutdown();
}
