//! `EndOfInput::Abort`: the peer's FIN closes the connection at once, unwritten output
//! dropped, and the close is still reported as the peer's (`PeerClosed`), not ours;
//! unless the callback closed the connection itself, which then stands.

mod util;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use reactor::{Builder, CloseReason, Config, Conn, Ctx, EndOfInput, Handler, SocketOptions};
use util::*;

/// More than the loopback socket buffers of both ends hold.
const BIG: usize = 16 << 20;

#[derive(Debug, Clone, Copy)]
enum OnEnd {
    /// Answer `Abort`.
    Abort,
    /// Call `Ctx::close`, then answer `Abort`.
    CloseThenAbort,
}

struct Server {
    on_end: OnEnd,
    /// Bytes to write on the first data.
    reply: usize,
    events: Sender<Event>,
}

#[derive(Debug, PartialEq)]
enum Event {
    Data(Vec<u8>),
    End { unwritten_before: bool },
    Closed(CloseReason),
}

impl Handler for Server {
    type Tag = ();
    type Msg = ();
    type Timer = ();

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
        if self.reply > 0 {
            cx.write(conn.id, &pattern(self.reply));
            self.reply = 0;
        }
        self.events.send(Event::Data(input.to_vec())).unwrap();
        input.len()
    }

    fn end_of_input(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>) -> EndOfInput {
        let unwritten_before = cx.unwritten(conn.id) > 0;
        self.events.send(Event::End { unwritten_before }).unwrap();
        if let OnEnd::CloseThenAbort = self.on_end {
            cx.close(conn.id);
        }
        EndOfInput::Abort
    }

    fn closed(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, reason: CloseReason) {
        self.events.send(Event::Closed(reason)).unwrap();
    }
}

fn start(on_end: OnEnd, reply: usize) -> (Running<()>, Receiver<Event>) {
    let (tx, rx) = channel();
    let config = Config {
        // A drain (what `Close` would do) would outlast every wait of the test.
        close_linger: Duration::from_secs(120),
        socket: SocketOptions {
            send_buffer: Some(32 * 1024),
            ..SocketOptions::default()
        },
        ..Config::default()
    };
    let r = Builder::new(config)
        .listen(any_port(), ())
        .start(move |_, _| Server {
            on_end,
            reply,
            events: tx.clone(),
        })
        .unwrap();
    (Running::new(r), rx)
}

/// Reads until end of stream or a reset; returns how many bytes came.
fn read_all(c: &mut std::net::TcpStream) -> usize {
    let mut buf = vec![0; 64 * 1024];
    let mut total = 0;
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return total,
            Ok(n) => total += n,
        }
    }
}

#[test]
fn abort_at_end_of_input_drops_unwritten_output_and_reports_the_peer() {
    let (r, events) = start(OnEnd::Abort, BIG);
    let mut c = client(r.addr());
    c.write_all(b"go").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    // Everything the peer sent comes first, then its end.
    assert_eq!(recv(&events, "data"), Event::Data(b"go".to_vec()));
    assert_eq!(
        recv(&events, "end of input"),
        Event::End {
            unwritten_before: true
        }
    );
    // Closed at once, while the client has read nothing of the big reply (a drain would
    // wait for it, up to the two-minute linger), and reported as the peer's close.
    assert_eq!(
        recv(&events, "the close"),
        Event::Closed(CloseReason::PeerClosed)
    );
    let got = read_all(&mut c);
    assert!(
        got < BIG,
        "all {got} bytes were written: nothing was dropped"
    );
    assert_empty(&events, "event");
    r.shutdown();
}

#[test]
fn abort_with_nothing_unwritten_is_reported_as_the_peers_close() {
    let (r, events) = start(OnEnd::Abort, 0);
    let mut c = client(r.addr());
    c.write_all(b"bye").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(recv(&events, "data"), Event::Data(b"bye".to_vec()));
    assert_eq!(
        recv(&events, "end of input"),
        Event::End {
            unwritten_before: false
        }
    );
    assert_eq!(
        recv(&events, "the close"),
        Event::Closed(CloseReason::PeerClosed)
    );
    assert_eq!(read_all(&mut c), 0);
    r.shutdown();
}

#[test]
fn a_close_made_in_end_of_input_stands_over_abort() {
    let (r, events) = start(OnEnd::CloseThenAbort, 100_000);
    let mut c = client(r.addr());
    c.write_all(b"go").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(recv(&events, "data"), Event::Data(b"go".to_vec()));
    assert!(matches!(recv(&events, "end of input"), Event::End { .. }));
    // The graceful close writes the reply out, then reports our own close.
    assert_eq!(read_all(&mut c), 100_000);
    assert_eq!(
        recv(&events, "the close"),
        Event::Closed(CloseReason::Local)
    );
    r.shutdown();
}
