//! The consumer-agent's limits, each set low and shown enforced with a clear answer or
//! a close: connections per loop, head and body size, idle connections, requests in
//! flight per connection (pipelining) and calls in flight per provider-agent.

mod util;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use test_support::net::closed_within;
use util::*;

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s
}

/// One race call on `s`, answered 200.
fn served(s: &mut TcpStream, param: &str) -> bool {
    if s.write_all(&race_request(param)).is_err() {
        return false;
    }
    let answers = read_answers(s, 1, Duration::from_secs(5));
    answers.first().is_some_and(|a| a.status == 200)
}

#[test]
fn connections_beyond_max_connections_are_closed() {
    let agent = fake_agent(Mode::Hash);
    // 3 per loop: the provider-agent connection and two HTTP connections.
    let running = consumer(&[agent.addr], &["--max-connections", "3"]);
    wait_ready(&running);
    let addr = running.http_addr();
    let mut first = connect(addr);
    let mut second = connect(addr);
    assert!(served(&mut first, "a") && served(&mut second, "b"));
    let mut third = connect(addr);
    assert!(
        closed_within(&mut third, Duration::from_secs(3)),
        "the connection over the limit is closed"
    );
    assert!(served(&mut first, "c"), "the others are still served");
    drop(second);
    let end = Instant::now() + Duration::from_secs(5);
    while !served(&mut connect(addr), "d") {
        assert!(Instant::now() < end, "a freed slot serves a new connection");
        std::thread::sleep(Duration::from_millis(50));
    }
    running.stop();
}

#[test]
fn heads_and_bodies_over_the_limits_are_refused() {
    let agent = fake_agent(Mode::Hash);
    let running = consumer(&[agent.addr], &["--max-head", "1024", "--max-body", "1024"]);
    wait_ready(&running);
    let addr = running.http_addr();
    let head = format!(
        "POST /invoke HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    assert_eq!(exchange(addr, head.as_bytes(), 1)[0].status, 431);
    let body = race_body(&"b".repeat(2000));
    let req = format!(
        "POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(exchange(addr, req.as_bytes(), 1)[0].status, 413);
    // A chunk-size line that never ends (a 100 KB extension and counting): 400 at
    // once, not buffered.
    let mut chunked = b"POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n5;".to_vec();
    chunked.extend(std::iter::repeat_n(b'a', 100 * 1024));
    let answer = exchange(addr, &chunked, 1).remove(0);
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (400, "chunk size line too long")
    );
    // Under both limits: served.
    assert_eq!(exchange(addr, &race_request("small"), 1)[0].status, 200);
    running.stop();
}

#[test]
fn idle_connections_are_closed_after_the_timeout() {
    let agent = fake_agent(Mode::Delay(2500));
    let running = consumer(&[agent.addr], &["--idle-timeout-secs", "1"]);
    wait_ready(&running);
    let addr = running.http_addr();
    let mut idle = connect(addr);
    // A request in flight longer than the timeout keeps its connection open.
    let mut busy = connect(addr);
    busy.write_all(&race_request("slow")).expect("write");
    let t = Instant::now();
    assert!(
        closed_within(&mut idle, Duration::from_secs(4)),
        "the idle connection is closed"
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?} for a 1 s timeout"
    );
    let answers = read_answers(&mut busy, 1, Duration::from_secs(5));
    assert_eq!(answers[0].status, 200, "the busy one is answered");
    running.stop();
}

#[test]
fn pipelined_requests_beyond_max_pipeline_wait() {
    let agent = fake_agent(Mode::Delay(300));
    let running = consumer(&[agent.addr], &["--max-pipeline", "2"]);
    wait_ready(&running);
    let mut s = connect(running.http_addr());
    let mut raw = Vec::new();
    for i in 0..6 {
        raw.extend_from_slice(&race_request(&format!("p{i}")));
    }
    let t = Instant::now();
    s.write_all(&raw).expect("write");
    let answers = read_answers(&mut s, 6, Duration::from_secs(10));
    let took = t.elapsed();
    assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
    for (i, a) in answers.iter().enumerate() {
        let want = codec::java::string_hash_code(&format!("p{i}")).to_string();
        assert_eq!(a.body, want, "answer {i} in order");
    }
    // Two at a time through a 300 ms provider: three rounds, not one.
    assert!(
        took >= Duration::from_millis(850),
        "6 requests, 2 in flight at once, took {took:?}"
    );
    running.stop();
}

#[test]
fn calls_beyond_max_upstream_inflight_are_answered_503() {
    let agent = fake_agent(Mode::Delay(500));
    let running = consumer(&[agent.addr], &["--max-upstream-inflight", "2"]);
    wait_ready(&running);
    let addr = running.http_addr();
    let mut conns: Vec<TcpStream> = (0..5).map(|_| connect(addr)).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        s.write_all(&race_request(&format!("c{i}"))).expect("write");
        // In order, so the first two take the slots.
        std::thread::sleep(Duration::from_millis(20));
    }
    let statuses: Vec<(u16, String)> = conns
        .iter_mut()
        .map(|s| {
            let a = read_answers(s, 1, Duration::from_secs(5)).remove(0);
            (a.status, a.body)
        })
        .collect();
    assert_eq!(
        statuses.iter().map(|s| s.0).collect::<Vec<_>>(),
        [200, 200, 503, 503, 503],
        "{statuses:?}"
    );
    assert!(
        statuses[2].1.contains("in-flight limit"),
        "a clear error: {}",
        statuses[2].1
    );
    // Answers free the slots.
    assert!(served(&mut conns[0], "again"));
    running.stop();
}

/// Waits until `read` gives the same value for `quiet` in a row (at most `limit`).
fn settled(read: impl Fn() -> usize, quiet: Duration, limit: Duration) -> usize {
    let end = Instant::now() + limit;
    let mut last = read();
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = read();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= quiet {
            return now;
        }
        assert!(
            Instant::now() < end,
            "still changing after {limit:?}: {now}"
        );
    }
}

#[test]
fn a_client_that_never_reads_is_read_no_further() {
    // 16 KiB answers: a few hundred fill the socket buffers and the agent's output
    // past its high watermark; pipelining stays on (the default limit, 128).
    const ANSWER: usize = 16 * 1024;
    const REQUESTS: usize = 2000;
    let agent = fake_agent(Mode::Big(ANSWER));
    let running = consumer(&[agent.addr], &[]);
    wait_ready(&running);
    let mut hog = connect(running.http_addr());
    let mut raw = Vec::new();
    for i in 0..REQUESTS {
        raw.extend_from_slice(&race_request(&format!("h{i}")));
    }
    hog.set_write_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    // The requests (about 500 KB) may not all fit in the socket buffers once the agent
    // stops reading: a write timing out is what is asked for.
    let _ = hog.write_all(&raw);
    let calls = || agent.calls.load(std::sync::atomic::Ordering::SeqCst);
    let taken = settled(calls, Duration::from_millis(500), Duration::from_secs(20));
    // Unbounded, every request would be called and its answer buffered (32 MB).
    assert!(
        taken < REQUESTS / 2,
        "{taken} of {REQUESTS} calls made for a client reading nothing"
    );
    // Another client is served meanwhile.
    let mut other = connect(running.http_addr());
    assert!(served(&mut other, "other"), "another client is served");
    // Once the client reads, the rest is read and answered, in order.
    let answers = read_answers(&mut hog, REQUESTS, Duration::from_secs(60));
    assert_eq!(answers.len(), REQUESTS);
    assert!(answers
        .iter()
        .all(|a| a.status == 200 && a.body.len() == ANSWER));
    running.stop();
}
