//! Past the bound on connections, each new one closes the oldest: a flood of idle
//! connections ages out instead of locking probes out.

mod util;

use std::net::TcpStream;
use std::time::Duration;

use reactor_admin::Config;
use util::*;

#[test]
fn past_the_bound_the_oldest_connections_are_closed() {
    let server = server(Config {
        max_connections: 16,
        // Far off: whatever closes below is closed by the bound, not the deadline.
        request_timeout: Duration::from_secs(30),
        ..Config::default()
    });
    let addr = server.local_addr();
    let mut conns: Vec<TcpStream> = Vec::new();
    for _ in 0..40 {
        conns.push(client(addr));
        // One at a time, so the server accepts them in this order.
        std::thread::sleep(Duration::from_millis(5));
    }
    // The probe is the 41st: it closes the 25th, and is answered.
    assert_healthy_within(addr, Duration::from_secs(1));
    for (i, s) in conns.iter_mut().enumerate().take(25) {
        assert!(closed_within(s, LIMIT), "connection {i} is still open");
    }
    for (i, s) in conns.iter_mut().enumerate().skip(25) {
        assert!(
            !closed_within(s, Duration::from_millis(50)),
            "connection {i} was closed"
        );
    }
    server.stop();
}

/// A thousand idle connections do not lock out a probe (the default bound is 1,024).
#[test]
fn a_flood_of_idle_connections_does_not_lock_out_probes() {
    let server = server(Config {
        max_connections: 256,
        ..Config::default()
    });
    let addr = server.local_addr();
    let conns: Vec<TcpStream> = (0..600).map(|_| client(addr)).collect();
    for _ in 0..3 {
        assert_healthy_within(addr, Duration::from_secs(1));
    }
    drop(conns);
    server.stop();
}
