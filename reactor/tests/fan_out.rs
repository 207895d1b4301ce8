//! Fan-out: one event that writes to many connections (an upstream read answering many
//! callers) has them flushed right after it, before the iteration's end; an event that
//! writes to a few leaves them for the end-of-iteration flush. Either way every caller
//! gets its bytes, in order.

mod util;

use std::io::Read;
use std::io::Write;
use std::net::TcpStream;
use std::sync::mpsc::{channel, Sender};

use reactor::{Builder, Config, Conn, ConnId, Ctx, Handler};
use util::*;

/// Callers say `c`; an upstream's `<k>` (one digit) writes a line to the first k
/// callers. At the end of the iteration that did it, `tick` reports how many of those
/// bytes were still unwritten.
#[derive(Debug)]
struct Hub {
    tx: Sender<Seen>,
    callers: Vec<ConnId>,
    fanned: Option<usize>,
}

#[derive(Debug, PartialEq)]
enum Seen {
    Caller(usize),
    FannedOut { to: usize, unwritten_at_tick: usize },
}

const LINE: &[u8] = b"answer\n";

impl Handler for Hub {
    type Tag = ();
    type Msg = ();
    type Timer = ();

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
        for &b in input {
            match b {
                b'c' => {
                    self.callers.push(conn.id);
                    self.tx.send(Seen::Caller(self.callers.len())).unwrap();
                }
                b'1'..=b'9' => {
                    let k = usize::from(b - b'0');
                    for &id in &self.callers[..k] {
                        assert!(cx.write(id, LINE));
                    }
                    self.fanned = Some(k);
                }
                _ => panic!("unexpected input {b}"),
            }
        }
        input.len()
    }

    fn tick(&mut self, cx: &mut Ctx<'_, Self>) {
        if let Some(k) = self.fanned.take() {
            let unwritten = self.callers[..k].iter().map(|&id| cx.unwritten(id)).sum();
            self.tx
                .send(Seen::FannedOut {
                    to: k,
                    unwritten_at_tick: unwritten,
                })
                .unwrap();
        }
    }
}

#[test]
fn an_event_answering_many_callers_is_flushed_before_the_iteration_ends() {
    let (tx, rx) = channel();
    let config = Config {
        loops: 1,
        ..Config::default()
    };
    let r = Running::new(
        Builder::new(config)
            .listen(any_port(), ())
            .start(move |_, _| Hub {
                tx: tx.clone(),
                callers: Vec::new(),
                fanned: None,
            })
            .unwrap(),
    );
    let mut callers: Vec<TcpStream> = Vec::new();
    for n in 1..=9 {
        let mut c = client(r.addr());
        c.write_all(b"c").unwrap();
        assert_eq!(recv(&rx, "caller"), Seen::Caller(n));
        callers.push(c);
    }
    let mut upstream = client(r.addr());
    let mut expected = [0usize; 9];
    // Seven callers: below the threshold, written by the iteration's flush. Eight and
    // nine: written as soon as the event was handled.
    for (k, flushed_early) in [(7, false), (8, true), (9, true), (2, false)] {
        upstream.write_all(&[b'0' + k as u8]).unwrap();
        let Seen::FannedOut {
            to,
            unwritten_at_tick,
        } = recv(&rx, "fan-out")
        else {
            panic!("expected a fan-out report")
        };
        assert_eq!(to, k);
        if flushed_early {
            assert_eq!(unwritten_at_tick, 0, "fan-out to {k} not flushed early");
        } else {
            assert_eq!(
                unwritten_at_tick,
                k * LINE.len(),
                "fan-out to {k} flushed early"
            );
        }
        for count in &mut expected[..k] {
            *count += 1;
        }
    }
    for (c, &lines) in callers.iter_mut().zip(&expected) {
        let mut got = vec![0; lines * LINE.len()];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, LINE.repeat(lines));
    }
    r.shutdown();
}
