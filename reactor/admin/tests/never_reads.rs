//! A client that never reads its answer holds neither the server nor its connection.

mod util;

use std::io::Write;
use std::time::Duration;

use reactor_admin::Config;
use util::*;

#[test]
fn a_client_that_never_reads_is_dropped_and_holds_up_no_one() {
    let server = server(Config::default());
    let addr = server.local_addr();
    let mut s = client(addr);
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Its answer is far larger than the socket buffers: it stays mostly unwritten.
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        assert_healthy_within(addr, Duration::from_secs(1));
    }
    // The server gives it a second (its close linger) to read, then drops it: reading
    // now, the client gets part of the answer and then the end.
    std::thread::sleep(Duration::from_millis(2500));
    let (got, closed) = drain(&mut s, LIMIT);
    assert!(closed, "still open");
    assert!(got < BIG, "the whole answer arrived: {got} bytes");
    assert_healthy_within(addr, Duration::from_secs(1));
    server.stop();
}

/// Kept alive, a client pipelining requests without reading the answers is dropped
/// once a megabyte of them waits.
#[test]
fn a_pipelining_client_that_never_reads_is_dropped() {
    let server = server(Config {
        keep_alive: Some(Duration::from_secs(5)),
        ..Config::default()
    });
    let addr = server.local_addr();
    let mut s = client(addr);
    let mut requests = Vec::new();
    for _ in 0..4 {
        requests.extend_from_slice(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    s.write_all(&requests).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (got, closed) = drain(&mut s, LIMIT);
    assert!(closed, "still open");
    assert!(got < 2 * BIG, "{got} bytes: more than one answer was sent");
    let probe = exchange(addr, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(probe.status, 200);
    server.stop();
}
