//! No number of slow or idle clients stalls `/healthz`: 64 connections that never send a
//! byte and one sending its request a byte every 1.5 s, all reopened as soon as the
//! server closes them, while `/healthz` is probed again and again.

mod util;

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reactor_admin::Config;
use test_support::wait::assert_eventually;
use util::*;

#[test]
fn healthz_answers_while_idle_and_slow_clients_hold_the_port() {
    let server = server(Config::default());
    let addr = server.local_addr();
    let pressure = Pressure::start(addr, 64, Duration::from_millis(1500));
    assert_eventually("64 idle connections", LIMIT, || {
        pressure.idle_open.load(Ordering::SeqCst) == 64
    });
    assert_eventually("the slow client's first byte", LIMIT, || {
        pressure.slow_bytes.load(Ordering::SeqCst) > 0
    });
    // Eight probes over about 5 s: across several of the idle clients' deadlines, their
    // reconnections, and the slow client's bytes.
    for _ in 0..8 {
        assert_healthy_within(addr, Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(600));
    }
    drop(pressure);
    server.stop();
}

/// A client trickling its request is cut off at the deadline (2 s from its accept),
/// though it is still sending, and told why.
#[test]
fn a_trickling_client_gets_408_at_the_deadline() {
    let server = server(Config::default());
    let mut s = client(server.local_addr());
    let started = Instant::now();
    let mut writer = s.try_clone().expect("clone");
    let trickle = std::thread::spawn(move || {
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" {
            if writer.write_all(&[*b]).is_err() || started.elapsed() > Duration::from_secs(4) {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let took = started.elapsed();
    let answer = parse(&raw).expect("an answer");
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(3),
        "cut off after {took:?}"
    );
    trickle.join().unwrap();
    server.stop();
}

/// A connection that sends nothing is closed at the deadline, without an answer.
#[test]
fn an_idle_connection_is_closed_at_the_deadline() {
    let server = server(Config {
        request_timeout: Duration::from_millis(300),
        ..Config::default()
    });
    let mut s = client(server.local_addr());
    let started = Instant::now();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("end of stream");
    assert!(raw.is_empty(), "{:?}", String::from_utf8_lossy(&raw));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "closed after {took:?}"
    );
    server.stop();
}
