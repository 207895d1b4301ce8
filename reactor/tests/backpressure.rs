//! Backpressure: output to a peer that does not read makes the connection congested;
//! once the peer reads, `drained` fires. Paused reading delivers nothing until resumed,
//! then everything that arrived meanwhile, end of stream included; `is_reading_paused`
//! tells which state a connection is in.

mod util;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::mpsc::{channel, Sender};
use std::time::Duration;

use reactor::{Builder, CloseReason, Config, Conn, ConnId, Ctx, Handler, SocketOptions};
use util::*;

#[derive(Debug, PartialEq)]
enum Seen {
    Congested { written: usize },
    Probe { congested: bool, unwritten: usize },
    Drained { unwritten: usize },
}

/// Writes 16 KiB every millisecond until the connection is congested, then stops
/// producing for good and waits for `drained`.
#[derive(Debug)]
struct Producer {
    tx: Sender<Seen>,
    conn: Option<ConnId>,
    written: usize,
    stopped: bool,
}

impl Handler for Producer {
    type Tag = ();
    type Msg = ();
    type Timer = ();

    fn opened(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>) {
        self.conn = Some(conn.id);
        cx.set_periodic(Duration::from_millis(1), ());
    }

    fn timer(&mut self, cx: &mut Ctx<'_, Self>, timer: reactor::TimerId, _: ()) {
        let Some(id) = self.conn else { return };
        if cx.is_congested(id) {
            self.stopped = true;
            cx.cancel_timer(timer);
            self.tx
                .send(Seen::Congested {
                    written: self.written,
                })
                .unwrap();
            return;
        }
        let chunk = pattern(self.written + 16 * 1024);
        cx.write(id, &chunk[self.written..]);
        self.written += 16 * 1024;
    }

    fn message(&mut self, cx: &mut Ctx<'_, Self>, _: ()) {
        let id = self.conn.unwrap();
        self.tx
            .send(Seen::Probe {
                congested: cx.is_congested(id),
                unwritten: cx.unwritten(id),
            })
            .unwrap();
    }

    fn drained(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>) {
        assert!(self.stopped);
        assert!(!cx.is_congested(conn.id));
        self.tx
            .send(Seen::Drained {
                unwritten: cx.unwritten(conn.id),
            })
            .unwrap();
    }

    fn data(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, input: &[u8]) -> usize {
        input.len()
    }
}

#[test]
fn congested_until_the_peer_reads_then_drained() {
    const HIGH: usize = 128 * 1024;
    const LOW: usize = 16 * 1024;
    let (tx, rx) = channel();
    let config = Config {
        high_watermark: HIGH,
        low_watermark: LOW,
        socket: SocketOptions {
            send_buffer: Some(32 * 1024),
            ..SocketOptions::default()
        },
        ..Config::default()
    };
    let r = Running::new(
        Builder::new(config)
            .listen(any_port(), ())
            .start(move |_, _| Producer {
                tx: tx.clone(),
                conn: None,
                written: 0,
                stopped: false,
            })
            .unwrap(),
    );
    let mut c = client(r.addr());
    let Seen::Congested { written } = recv(&rx, "congestion") else {
        panic!("expected congestion first")
    };
    assert!(written > HIGH);
    // Nobody reads: it stays congested, and no drained comes.
    for _ in 0..3 {
        r.reactor().handles()[0].send(()).unwrap();
        match recv(&rx, "probe") {
            Seen::Probe {
                congested: true,
                unwritten,
            } => assert!(unwritten > LOW),
            other => panic!("expected a congested probe, got {other:?}"),
        }
    }
    let mut got = vec![0; written];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got, pattern(written));
    match recv(&rx, "drained") {
        Seen::Drained { unwritten } => assert!(unwritten <= LOW),
        other => panic!("expected drained, got {other:?}"),
    }
    r.reactor().handles()[0].send(()).unwrap();
    assert_eq!(
        recv(&rx, "probe"),
        Seen::Probe {
            congested: false,
            unwritten: 0
        }
    );
    r.shutdown();
}

#[derive(Debug, PartialEq)]
enum Paused {
    /// What `is_reading_paused` said before the resume (paused since `opened`), after
    /// pausing once more, and after the resume.
    Flags([bool; 3]),
    Resumed {
        seen: usize,
    },
    Data(Vec<u8>),
    Closed(CloseReason),
}

/// Pauses reading every connection on open, resumes after 100 ms.
#[derive(Debug)]
struct Pauser {
    tx: Sender<Paused>,
    conn: Option<ConnId>,
    seen: usize,
}

impl Handler for Pauser {
    type Tag = ();
    type Msg = ();
    type Timer = ();

    fn opened(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>) {
        assert!(!cx.is_reading_paused(conn.id));
        cx.pause_reading(conn.id);
        self.conn = Some(conn.id);
        cx.set_timer(Duration::from_millis(100), ());
    }

    fn timer(&mut self, cx: &mut Ctx<'_, Self>, _: reactor::TimerId, _: ()) {
        let id = self.conn.unwrap();
        let before = cx.is_reading_paused(id);
        cx.pause_reading(id); // pausing twice is pausing
        let still = cx.is_reading_paused(id);
        cx.resume_reading(id);
        let after = cx.is_reading_paused(id);
        self.tx.send(Paused::Flags([before, still, after])).unwrap();
        self.tx.send(Paused::Resumed { seen: self.seen }).unwrap();
    }

    fn data(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, input: &[u8]) -> usize {
        self.seen += input.len();
        self.tx.send(Paused::Data(input.to_vec())).unwrap();
        input.len()
    }

    fn closed(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, reason: CloseReason) {
        self.tx.send(Paused::Closed(reason)).unwrap();
    }
}

#[test]
fn paused_reading_delivers_after_resume_including_eof() {
    let (tx, rx) = channel();
    let r = Running::new(
        Builder::new(Config::default())
            .listen(any_port(), ())
            .start(move |_, _| Pauser {
                tx: tx.clone(),
                conn: None,
                seen: 0,
            })
            .unwrap(),
    );
    let mut c = client(r.addr());
    c.write_all(b"while paused").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(recv(&rx, "flags"), Paused::Flags([true, true, false]));
    assert_eq!(recv(&rx, "resume"), Paused::Resumed { seen: 0 });
    assert_eq!(recv(&rx, "data"), Paused::Data(b"while paused".to_vec()));
    assert_eq!(recv(&rx, "close"), Paused::Closed(CloseReason::PeerClosed));
    r.shutdown();
}
