//! A peer that resets its connection while the loop writes to it: the loop reports an
//! I/O close, does not panic, and its other connections carry on.

mod util;

use std::io::Read;
use std::sync::mpsc::{channel, Sender};
use std::time::Duration;

use reactor::{Builder, CloseReason, Config, Conn, Ctx, Handler};
use socket2::SockRef;
use util::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Flood,
    Echo,
}

/// `Flood` connections get a stream of bytes, refilled whenever it drains.
#[derive(Debug)]
struct Server(Sender<(Tag, CloseReason)>);

static CHUNK: [u8; 64 * 1024] = [7; 64 * 1024];

impl Server {
    fn feed(cx: &mut Ctx<'_, Self>, conn: Conn<Tag>) {
        while !cx.is_congested(conn.id) {
            cx.write(conn.id, &CHUNK);
        }
    }
}

impl Handler for Server {
    type Tag = Tag;
    type Msg = ();
    type Timer = ();

    fn opened(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Tag>) {
        if conn.tag == Tag::Flood {
            Self::feed(cx, conn);
        }
    }

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Tag>, input: &[u8]) -> usize {
        if conn.tag == Tag::Echo {
            cx.write(conn.id, input);
        }
        input.len()
    }

    fn drained(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Tag>) {
        Self::feed(cx, conn);
    }

    fn closed(&mut self, _: &mut Ctx<'_, Self>, conn: Conn<Tag>, reason: CloseReason) {
        self.0.send((conn.tag, reason)).unwrap();
    }
}

#[test]
fn reset_mid_write_closes_with_io_error_only_that_connection() {
    let (tx, rx) = channel();
    let r = Running::new(
        Builder::new(Config::default())
            .listen(any_port(), Tag::Flood)
            .listen(any_port(), Tag::Echo)
            .start(move |_, _| Server(tx.clone()))
            .unwrap(),
    );
    let addrs = r.addrs();
    let mut echo = client(addrs[1]);
    ping(&mut echo, b"before");

    for round in 0..5 {
        let mut flood = client(addrs[0]);
        // Read some, so the server is mid-stream, then reset.
        let mut buf = vec![0; 256 * 1024];
        let mut got = 0;
        while got < 1 << 20 {
            got += flood.read(&mut buf).unwrap();
        }
        SockRef::from(&flood)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(flood);
        let (tag, reason) = recv(&rx, "close of the reset connection");
        assert_eq!(tag, Tag::Flood, "round {round}");
        assert!(
            matches!(reason, CloseReason::Io(_)),
            "round {round}: expected an Io close, got {reason:?}"
        );
        ping(&mut echo, format!("after reset {round}").as_bytes());
    }
    assert_empty(&rx, "close");
    drop(echo);
    assert_eq!(
        recv(&rx, "echo close"),
        (Tag::Echo, CloseReason::PeerClosed)
    );
    r.shutdown();
}
