//! Pipelined length-prefixed messages, split at every byte boundary: a handler that
//! consumes only whole messages sees each exactly once, whatever the split.

mod util;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use reactor::{Builder, CloseReason, Config, Conn, ConnId, Ctx, Handler};
use util::*;

#[derive(Debug, Default)]
struct Seen {
    /// Fresh bytes the loop delivered (not counting leftovers offered again).
    bytes: AtomicUsize,
    messages: AtomicUsize,
}

/// Frames are `u32 length (LE) | payload`. Consumes only whole frames, echoing each.
#[derive(Debug)]
struct Frames {
    seen: Arc<Seen>,
    /// What each connection left unconsumed last time.
    left: HashMap<ConnId, usize>,
}

impl Handler for Frames {
    type Tag = ();
    type Msg = ();
    type Timer = ();

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
        let left = self.left.get(&conn.id).copied().unwrap_or(0);
        assert!(input.len() >= left, "leftover shrank");
        let mut at = 0;
        let mut whole = 0;
        while input.len() - at >= 4 {
            let len = u32::from_le_bytes(input[at..at + 4].try_into().unwrap()) as usize;
            if input.len() - at - 4 < len {
                break;
            }
            cx.write(conn.id, &input[at..at + 4 + len]);
            at += 4 + len;
            whole += 1;
        }
        self.left.insert(conn.id, input.len() - at);
        self.seen.messages.fetch_add(whole, Ordering::SeqCst);
        // Published last: once the test sees all bytes, the messages are counted.
        self.seen
            .bytes
            .fetch_add(input.len() - left, Ordering::SeqCst);
        at
    }

    fn closed(&mut self, _: &mut Ctx<'_, Self>, conn: Conn<()>, _: CloseReason) {
        self.left.remove(&conn.id);
    }
}

fn start() -> (Running<()>, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let r = Builder::new(Config::default())
        .listen(any_port(), ())
        .start(move |_, _| Frames {
            seen: s.clone(),
            left: HashMap::new(),
        })
        .unwrap();
    (Running::new(r), seen)
}

/// Messages of lengths 0, 1, 2, ... with distinct contents.
fn stream(count: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..count {
        out.extend_from_slice(&(i as u32).to_le_bytes());
        out.extend((0..i).map(|j| (i * 31 + j) as u8));
    }
    out
}

#[test]
fn split_once_at_every_offset() {
    const COUNT: usize = 12;
    let (server, seen) = start();
    let all = stream(COUNT);
    let mut total_bytes = 0;
    let mut total_messages = 0;
    for k in 0..=all.len() {
        let mut c = client(server.addr());
        c.write_all(&all[..k]).unwrap();
        // The loop has read the first part before the second is sent.
        total_bytes += k;
        wait_count("first part", &seen.bytes, total_bytes);
        c.write_all(&all[k..]).unwrap();
        total_bytes += all.len() - k;
        let mut back = vec![0; all.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, all, "split at {k}");
        total_messages += COUNT;
        wait_count("bytes", &seen.bytes, total_bytes);
        assert_eq!(seen.messages.load(Ordering::SeqCst), total_messages);
    }
    server.shutdown();
}

#[test]
fn one_byte_at_a_time() {
    const COUNT: usize = 20;
    let (server, seen) = start();
    let all = stream(COUNT);
    let mut c = client(server.addr());
    for (i, b) in all.iter().enumerate() {
        c.write_all(std::slice::from_ref(b)).unwrap();
        wait_count("byte", &seen.bytes, i + 1);
    }
    let mut back = vec![0; all.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, all);
    assert_eq!(seen.messages.load(Ordering::SeqCst), COUNT);
    server.shutdown();
}

#[test]
fn many_messages_in_one_write() {
    const COUNT: usize = 3000;
    let (server, seen) = start();
    let all = stream(COUNT % 256).repeat(COUNT / (COUNT % 256) + 1);
    let mut c = client(server.addr());
    let mut w = c.try_clone().unwrap();
    let sent = all.clone();
    let writer = std::thread::spawn(move || w.write_all(&sent).unwrap());
    let mut back = vec![0; all.len()];
    c.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back, all);
    wait_count("bytes", &seen.bytes, all.len());
    server.shutdown();
}
