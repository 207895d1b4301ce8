//! Cross-thread messages: many senders, every message delivered exactly once, and a
//! loop that has exited refuses them.

mod util;

use std::sync::mpsc::{channel, Sender};

use reactor::{Builder, Config, Conn, Ctx, Handler, LoopGone};
use util::*;

const SENDERS: usize = 8;
const EACH: usize = 20_000;

#[derive(Debug)]
struct Counter {
    counts: Vec<u8>,
    total: usize,
    done: Sender<Vec<u8>>,
}

impl Handler for Counter {
    type Tag = ();
    type Msg = usize;
    type Timer = ();

    fn message(&mut self, cx: &mut Ctx<'_, Self>, msg: usize) {
        self.counts[msg] += 1;
        self.total += 1;
        if self.total == SENDERS * EACH {
            self.done.send(std::mem::take(&mut self.counts)).unwrap();
            cx.exit();
        }
    }

    fn data(&mut self, _: &mut Ctx<'_, Self>, _: Conn<()>, input: &[u8]) -> usize {
        input.len()
    }
}

#[test]
fn many_senders_each_message_once() {
    let (tx, rx) = channel();
    let r = Builder::<()>::new(Config::default())
        .start(move |_, _| Counter {
            counts: vec![0; SENDERS * EACH],
            total: 0,
            done: tx.clone(),
        })
        .unwrap();
    let handle = r.handles()[0].clone();
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let h = handle.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    h.send(s * EACH + i).unwrap();
                    if i.is_multiple_of(1000) {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let counts = recv(&rx, "all messages");
    if let Some(i) = counts.iter().position(|&c| c != 1) {
        panic!("message {i} delivered {} times", counts[i]);
    }
    r.join();
    assert_eq!(handle.send(0), Err(LoopGone), "the loop has exited");
    assert_eq!(handle.stop(), Err(LoopGone));
}
