//! A `ConnId` kept after its connection closed is harmless: every operation on it is a
//! no-op, even once its slot is reused by a new connection.

mod util;

use std::io::Read;
use std::sync::mpsc::{channel, Sender};

use reactor::{Builder, CloseReason, Config, Conn, ConnId, Ctx, Handler};
use util::*;

#[derive(Debug, PartialEq)]
struct Report {
    write: bool,
    live: bool,
    tag: Option<()>,
    unwritten: usize,
    congested: bool,
    output: bool,
    paused: bool,
}

#[derive(Debug)]
struct Server {
    tx: Sender<(ConnId, ConnId, Report)>,
    first_closed: Sender<()>,
    old: Option<ConnId>,
}

fn probe(cx: &mut Ctx<'_, Server>, id: ConnId) -> Report {
    cx.pause_reading(id);
    let paused = cx.is_reading_paused(id);
    cx.resume_reading(id);
    cx.close(id);
    cx.abort(id);
    Report {
        paused,
        write: cx.write(id, b"stale"),
        live: cx.is_live(id),
        tag: cx.tag(id),
        unwritten: cx.unwritten(id),
        congested: cx.is_congested(id),
        output: cx.output(id).is_some(),
    }
}

impl Handler for Server {
    type Tag = ();
    type Msg = ();
    type Timer = ();

    fn opened(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>) {
        if let Some(old) = self.old {
            let report = probe(cx, old);
            assert!(cx.write(conn.id, b"fresh"));
            cx.close(conn.id);
            self.tx.send((old, conn.id, report)).unwrap();
        }
    }

    fn data(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, input: &[u8]) -> usize {
        input.len()
    }

    fn closed(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, _: CloseReason) {
        if self.old.is_none() {
            self.old = Some(conn.id);
            assert!(!cx.write(conn.id, b"x"), "write to a closed connection");
            self.first_closed.send(()).unwrap();
        }
    }
}

#[test]
fn stale_id_is_a_no_op_even_after_slot_reuse() {
    let (tx, rx) = channel();
    let (closed_tx, closed_rx) = channel();
    let r = Running::new(
        Builder::new(Config::default())
            .listen(any_port(), ())
            .start(move |_, _| Server {
                tx: tx.clone(),
                first_closed: closed_tx.clone(),
                old: None,
            })
            .unwrap(),
    );
    let first = client(r.addr());
    drop(first);
    // The second connection comes once the first close was handled: it takes the slot.
    recv(&closed_rx, "first close");
    let mut second = client(r.addr());
    let (old, new, report) = recv(&rx, "report");
    assert_ne!(old, new);
    assert_eq!(old.index(), new.index(), "the slot is reused");
    assert_eq!(
        report,
        Report {
            write: false,
            live: false,
            tag: None,
            unwritten: 0,
            congested: false,
            output: false,
            paused: false,
        }
    );
    let mut got = Vec::new();
    second.read_to_end(&mut got).unwrap();
    assert_eq!(
        got, b"fresh",
        "nothing written to the stale id reached the new connection"
    );
    r.shutdown();
}
