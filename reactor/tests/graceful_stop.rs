//! A graceful stop with work in flight: listeners close at once, the handler finishes
//! what it started, every answer reaches the client, then the loop exits.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reactor::{Builder, Config, Conn, ConnId, Ctx, Handler};
use util::*;

/// Each 8-byte request is answered (its id + 1) after 30..90 ms of pretend work.
#[derive(Debug)]
struct Worker {
    requests: Arc<AtomicUsize>,
    in_flight: Vec<(ConnId, u64)>,
    next_token: u64,
}

impl Worker {
    fn maybe_exit(&self, cx: &mut Ctx<'_, Self>) {
        if cx.is_stopping() && self.in_flight.is_empty() {
            cx.exit();
        }
    }
}

impl Handler for Worker {
    type Tag = ();
    type Msg = ();
    type Timer = u64;

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
        let whole = input.len() / 8 * 8;
        for req in input[..whole].chunks_exact(8) {
            let id = u64::from_le_bytes(req.try_into().unwrap());
            let token = self.next_token;
            self.next_token += 1;
            self.in_flight.push((conn.id, id));
            cx.set_timer(Duration::from_millis(30 + id % 60), token);
        }
        self.requests.fetch_add(whole / 8, Ordering::SeqCst);
        whole
    }

    fn timer(&mut self, cx: &mut Ctx<'_, Self>, _: reactor::TimerId, _: u64) {
        // Answers go out in completion order; the client matches them by id.
        let (earliest, _) = self
            .in_flight
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, id))| 30 + id % 60)
            .unwrap();
        let (conn, id) = self.in_flight.remove(earliest);
        cx.write(conn, &(id + 1).to_le_bytes());
        self.maybe_exit(cx);
    }

    fn stopping(&mut self, cx: &mut Ctx<'_, Self>) {
        self.maybe_exit(cx);
    }
}

#[test]
fn stop_waits_for_in_flight_answers() {
    const CLIENTS: usize = 4;
    const EACH: u64 = 50;
    let requests = Arc::new(AtomicUsize::new(0));
    let rq = requests.clone();
    let r = Builder::new(Config::default())
        .listen(any_port(), ())
        .start(move |_, _| Worker {
            requests: rq.clone(),
            in_flight: Vec::new(),
            next_token: 0,
        })
        .unwrap();
    let addr = r.local_addrs()[0];
    let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| client(addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let batch: Vec<u8> = (0..EACH)
            .flat_map(|j| (i as u64 * 1000 + j).to_le_bytes())
            .collect();
        c.write_all(&batch).unwrap();
    }
    // Every request has been read (so none sits unread in a socket when it closes).
    wait_count("requests read", &requests, CLIENTS * EACH as usize);
    r.stop();
    for (i, c) in clients.iter_mut().enumerate() {
        let mut answers = Vec::new();
        c.read_to_end(&mut answers)
            .expect("answers, then end of stream");
        let mut ids: Vec<u64> = answers
            .chunks_exact(8)
            .map(|a| u64::from_le_bytes(a.try_into().unwrap()) - 1)
            .collect();
        ids.sort_unstable();
        let want: Vec<u64> = (0..EACH).map(|j| i as u64 * 1000 + j).collect();
        assert_eq!(ids, want, "client {i}: every answer, once");
    }
    r.join();
    // The listener closed with the stop.
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
    assert!(
        matches!(&refused, Err(e) if e.kind() == ErrorKind::ConnectionRefused),
        "listener still open after stop: {refused:?}"
    );
}
