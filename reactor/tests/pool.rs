//! The pool example (a line-protocol load balancer over persistent upstream connections,
//! on 127.0.0.1): replies come back in request order from both upstreams; an upstream
//! killed is reconnected with growing delays while traffic flows through the other;
//! restarted, it takes traffic again; requests find an answer when no upstream is open
//! or when theirs closes.

mod util;

#[path = "../examples/pool.rs"]
mod pool;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::Duration;

use pool::{Msg, PoolConfig, SlotStatus};
use reactor::{Builder, Config, Conn, Ctx, Handler};
use util::*;

/// An upstream that answers every line `<name> <line>`, or, if `silent`, never answers;
/// it counts the lines it got.
#[derive(Debug)]
struct Named {
    name: &'static str,
    silent: bool,
    lines: Arc<AtomicUsize>,
}

impl Handler for Named {
    type Tag = ();
    type Msg = ();
    type Timer = ();

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
        let mut consumed = 0;
        while let Some(n) = input[consumed..].iter().position(|&b| b == b'\n') {
            if !self.silent {
                cx.write(conn.id, format!("{} ", self.name).as_bytes());
                cx.write(conn.id, &input[consumed..consumed + n + 1]);
            }
            consumed += n + 1;
            self.lines.fetch_add(1, Ordering::SeqCst);
        }
        consumed
    }
}

fn upstream(name: &'static str, addr: SocketAddr, silent: bool) -> (Running<()>, Arc<AtomicUsize>) {
    let lines = Arc::new(AtomicUsize::new(0));
    let counter = lines.clone();
    let r = Builder::new(Config::default())
        .listen(addr, ())
        .start(move |_, _| Named {
            name,
            silent,
            lines: counter.clone(),
        })
        .unwrap_or_else(|e| panic!("upstream {name} on {addr}: {e}"));
    (Running::new(r), lines)
}

fn start_pool(upstreams: Vec<SocketAddr>, per_upstream: usize) -> Running<Msg> {
    let cfg = PoolConfig {
        backoff_initial: Duration::from_millis(40),
        backoff_max: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        ..PoolConfig::new(upstreams, per_upstream)
    };
    Running::new(pool::start(any_port(), cfg, Config::default()).unwrap())
}

fn status(p: &Running<Msg>) -> Vec<SlotStatus> {
    let (tx, rx) = channel();
    p.reactor().handles()[0].send(Msg::Status(tx)).unwrap();
    recv(&rx, "the pool's status")
}

/// Sends lines `0..n` at once (pipelined) and reads `n` reply lines.
fn exchange(c: &mut BufReader<TcpStream>, n: usize) -> Vec<String> {
    let lines: String = (0..n).map(|i| format!("{i}\n")).collect();
    c.get_mut().write_all(lines.as_bytes()).unwrap();
    (0..n)
        .map(|_| {
            let mut line = String::new();
            c.read_line(&mut line).unwrap();
            assert!(line.ends_with('\n'), "a whole reply line: {line:?}");
            line
        })
        .collect()
}

/// The upstream name of each reply, checking that reply `i` answers request `i`.
#[track_caller]
fn answered_by(replies: &[String]) -> Vec<String> {
    replies
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (name, line) = r.trim_end().split_once(' ').expect("a `name line` reply");
            assert_eq!(line, i.to_string(), "reply {i} out of order: {replies:?}");
            name.to_string()
        })
        .collect()
}

#[test]
fn reconnects_with_growing_delays_and_traffic_flows_again() {
    let (a, _) = upstream("a", any_port(), false);
    let (b, _) = upstream("b", any_port(), false);
    let (a_addr, b_addr) = (a.addr(), b.addr());
    let p = start_pool(vec![a_addr, b_addr], 2);
    assert_eventually("the pool's four connections open", LIMIT, || {
        status(&p).iter().all(|s| s.open)
    });

    // Pipelined lines go round-robin over the four connections, and come back in order.
    let mut c = BufReader::new(client(p.addr()));
    let names = answered_by(&exchange(&mut c, 8));
    assert_eq!(names, ["a", "b", "a", "b", "a", "b", "a", "b"]);

    // Kill b: its two connections are retried, refused, retried later and later.
    b.shutdown();
    let retried = |s: &SlotStatus| s.addr != b_addr || s.retry_delays.len() >= 4;
    assert_eventually("four retries of each of b's connections", LIMIT, || {
        status(&p).iter().all(retried)
    });
    for s in status(&p) {
        if s.addr == a_addr {
            assert!(s.open && s.retry_delays.is_empty(), "{s:?}");
            continue;
        }
        let d = &s.retry_delays;
        // Doubling with jitter between half and all of the nominal delay: never
        // shorter than the one before, and the fourth at least 4x the first.
        assert!(d.windows(2).all(|w| w[1] >= w[0]), "not growing: {d:?}");
        assert!(d[3] >= d[0] * 4, "not doubling: {d:?}");
        assert!(d[0] <= Duration::from_millis(40), "{d:?}");
    }

    // Meanwhile a serves everything.
    let names = answered_by(&exchange(&mut c, 8));
    assert!(names.iter().all(|n| n == "a"), "{names:?}");

    // Restart b on its address: the pool reconnects, resets its delays, and b serves
    // again.
    let (b, _) = upstream("b", b_addr, false);
    assert_eventually("b's connections open again", LIMIT, || {
        status(&p).iter().all(|s| s.open)
    });
    assert!(status(&p).iter().all(|s| s.retry_delays.is_empty()));
    let names = answered_by(&exchange(&mut c, 8));
    assert_eq!(names.iter().filter(|n| *n == "b").count(), 4, "{names:?}");

    // A client that half-closes after its requests still gets every reply, then EOF.
    let lines: String = (0..5).map(|i| format!("{i}\n")).collect();
    let mut c = c.into_inner();
    c.write_all(lines.as_bytes()).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut rest = String::new();
    c.read_to_string(&mut rest).unwrap();
    let replies: Vec<String> = rest.split_inclusive('\n').map(String::from).collect();
    assert_eq!(answered_by(&replies).len(), 5);

    p.shutdown();
    a.shutdown();
    b.shutdown();
}

#[test]
fn requests_are_answered_when_no_upstream_is_open_or_theirs_closes() {
    // Nothing listens: every request is answered at once.
    let down = TcpListener::bind(any_port()).unwrap().local_addr().unwrap();
    let p = start_pool(vec![down], 1);
    let mut c = BufReader::new(client(p.addr()));
    c.get_mut().write_all(b"hello\nworld\n").unwrap();
    for _ in 0..2 {
        let mut line = String::new();
        c.read_line(&mut line).unwrap();
        assert_eq!(line, "ERR no upstream\n");
    }
    let s = &status(&p)[0];
    assert!(!s.open && !s.retry_delays.is_empty(), "{s:?}");
    p.shutdown();

    // An upstream that never answers, then dies: the requests it held fail.
    let (silent, lines) = upstream("silent", any_port(), true);
    let p = start_pool(vec![silent.addr()], 1);
    assert_eventually("the connection open", LIMIT, || status(&p)[0].open);
    let mut c = BufReader::new(client(p.addr()));
    c.get_mut().write_all(b"1\n2\n").unwrap();
    wait_count("the requests at the upstream", &lines, 2);
    silent.shutdown();
    for _ in 0..2 {
        let mut line = String::new();
        c.read_line(&mut line).unwrap();
        assert_eq!(line, "ERR upstream closed\n");
    }
    p.shutdown();
}
