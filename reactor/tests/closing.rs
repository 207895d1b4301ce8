//! Closing: a lingering close gets the last reply to a peer that is still sending; a
//! peer that neither reads nor closes is cut off at the linger limit; an exiting loop
//! writes out its buffered output; a reset on a half-closed connection is noticed; a
//! connection closed while connecting still sends what was written to it; input left
//! over when reading resumes inside `data` is offered again.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::sync::mpsc::{channel, Sender};
use std::time::{Duration, Instant};

use reactor::{Builder, CloseReason, Config, Conn, Ctx, EndOfInput, Handler};
use util::*;

/// What a scripted server does with a connection's first bytes.
#[derive(Debug, Clone, Copy)]
enum Script {
    /// Answer `REPLY` and close (as an HTTP server rejects a request it will not read).
    ReplyAndClose,
    /// Answer with `BIG` bytes of pattern and exit the loop at once.
    ReplyBigAndExit,
    /// Keep a half-closed connection open for writing, and report its end of input.
    KeepHalfOpen,
}

const REPLY: &[u8] = b"413 request too large\n";
const BIG: usize = 8 << 20;

struct Scripted {
    script: Script,
    closes: Sender<CloseReason>,
    ended: Sender<()>,
}

impl Handler for Scripted {
    type Tag = ();
    type Msg = ();
    type Timer = ();

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
        if cx.is_open(conn.id) {
            match self.script {
                Script::ReplyAndClose => {
                    cx.write(conn.id, REPLY);
                    cx.close(conn.id);
                }
                Script::ReplyBigAndExit => {
                    cx.write(conn.id, &pattern(BIG));
                    cx.exit();
                }
                Script::KeepHalfOpen => {}
            }
        }
        input.len()
    }

    fn end_of_input(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>) -> EndOfInput {
        let _ = self.ended.send(());
        EndOfInput::KeepOpen
    }

    fn closed(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, reason: CloseReason) {
        let _ = self.closes.send(reason);
    }
}

/// A scripted server: its address, its close reasons, its ends of input.
fn start(
    script: Script,
    config: Config,
) -> (
    Running<()>,
    std::sync::mpsc::Receiver<CloseReason>,
    std::sync::mpsc::Receiver<()>,
) {
    let (closes, closes_rx) = channel();
    let (ended, ended_rx) = channel();
    let r = Builder::new(config)
        .listen(any_port(), ())
        .start(move |_, _| Scripted {
            script,
            closes: closes.clone(),
            ended: ended.clone(),
        })
        .expect("start scripted reactor");
    (Running::new(r), closes_rx, ended_rx)
}

#[test]
fn a_peer_still_sending_gets_the_reply_not_a_reset() {
    let (r, closes, _) = start(Script::ReplyAndClose, Config::default());
    let mut c = client(r.addr());
    // The server answers the first bytes and closes while 2 MiB more are on the way.
    // Closing a socket with unread input would reset it, and the reset would destroy
    // the reply: the lingering close reads and discards until our FIN.
    let chunk = pattern(64 * 1024);
    for _ in 0..32 {
        c.write_all(&chunk)
            .expect("the server discards input while lingering, it does not reset");
    }
    c.shutdown(Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, REPLY);
    assert_eq!(recv(&closes, "the close"), CloseReason::Local);
    r.shutdown();
}

#[test]
fn a_peer_that_never_closes_is_cut_off_at_the_linger_limit() {
    let linger = Duration::from_millis(300);
    let (r, closes, _) = start(
        Script::ReplyAndClose,
        Config {
            close_linger: linger,
            ..Config::default()
        },
    );
    let mut c = client(r.addr());
    c.write_all(b"hello").unwrap();
    // The reply, then our FIN (end of stream), though the client has not closed.
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).unwrap();
    let fin_at = Instant::now();
    assert_eq!(answer, REPLY);
    // The client keeps its side open: the server waits for its FIN up to the limit.
    assert_eq!(recv(&closes, "the close"), CloseReason::Local);
    assert!(
        fin_at.elapsed() >= linger / 2,
        "closed {:?} after its FIN, before the linger limit {linger:?}",
        fin_at.elapsed()
    );
    drop(c);
    r.shutdown();
}

#[test]
fn an_exiting_loop_writes_out_a_reply_larger_than_the_socket_buffer() {
    let (r, closes, _) = start(Script::ReplyBigAndExit, Config::default());
    let mut c = client(r.addr());
    c.write_all(b"go").unwrap();
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).unwrap();
    assert_eq!(answer.len(), BIG);
    assert!(answer == pattern(BIG), "the reply arrived altered");
    assert_eq!(recv(&closes, "the close"), CloseReason::Shutdown);
    r.shutdown();
}

#[test]
fn a_reset_on_a_half_closed_connection_closes_it() {
    let (r, closes, ended) = start(Script::KeepHalfOpen, Config::default());
    let mut c = client(r.addr());
    c.write_all(b"request").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    recv(&ended, "the end of input");
    // Kept open for writing, with nothing to write: only the error event tells.
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c); // a reset, with linger 0
    match recv(&closes, "the close") {
        CloseReason::Io(_) => {}
        other => panic!("closed as {other:?}, not on the reset"),
    }
    r.shutdown();
}

/// Connects at start, writes a message and closes at once, before the connect completes.
struct FireAndForget {
    to: std::net::SocketAddr,
    closes: Sender<CloseReason>,
}

impl Handler for FireAndForget {
    type Tag = ();
    type Msg = ();
    type Timer = ();

    fn started(&mut self, cx: &mut Ctx<'_, Self>) {
        let id = cx
            .connect(self.to, (), Some(LIMIT))
            .expect("start connecting");
        assert!(cx.write(id, b"fire and forget"));
        cx.close(id);
    }

    fn opened(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>) {
        panic!("a connection closed while connecting is not reported opened");
    }

    fn data(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, input: &[u8]) -> usize {
        input.len()
    }

    fn closed(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, reason: CloseReason) {
        let _ = self.closes.send(reason);
    }
}

#[test]
fn closing_while_connecting_still_sends_what_was_written() {
    let upstream = TcpListener::bind(any_port()).unwrap();
    let to = upstream.local_addr().unwrap();
    let (closes, closes_rx) = channel();
    let r = Running::new(
        Builder::new(Config::default())
            .start(move |_, _| FireAndForget {
                to,
                closes: closes.clone(),
            })
            .unwrap(),
    );
    let (mut s, _) = upstream.accept().unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"fire and forget");
    drop(s);
    assert_eq!(recv(&closes_rx, "the close"), CloseReason::Local);
    r.shutdown();
}

/// Answers one line per call, pausing and at once resuming its reading in between (as
/// a handler does whose pipeline limit is hit, then freed by a synchronous answer).
struct OneLineAtATime;

impl Handler for OneLineAtATime {
    type Tag = ();
    type Msg = ();
    type Timer = ();

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
        let Some(end) = input.iter().position(|&b| b == b'\n') else {
            return 0;
        };
        cx.write(conn.id, &input[..=end]);
        cx.pause_reading(conn.id);
        cx.resume_reading(conn.id);
        end + 1
    }
}

#[test]
fn input_left_when_reading_resumes_inside_data_is_offered_again() {
    let r = Running::new(
        Builder::new(Config::default())
            .listen(any_port(), ())
            .start(|_, _| OneLineAtATime)
            .unwrap(),
    );
    let mut c = client(r.addr());
    // One write: all three lines arrive in one read, and nothing more follows.
    let lines = b"one\ntwo\nthree\n";
    c.write_all(lines).unwrap();
    let mut back = vec![0; lines.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, lines);
    r.shutdown();
}
