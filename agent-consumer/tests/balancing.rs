//! The adaptive balancer against fake provider-agents of uneven capacity on loopback.

mod util;

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use util::*;

/// Gauge `name` of upstream `addr` in the consumer-agent's `/metrics` text.
fn upstream_gauge(running: &agent_consumer::Running, name: &str, addr: &str) -> f64 {
    let text = running.metrics().render();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("upstream=\"{addr}\"")))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{name} of {addr} in /metrics:\n{text}"))
}

#[test]
fn a_provider_that_queues_instead_of_refusing_is_capped_near_its_capacity() {
    // One provider-agent answers each call in 5 ms however many come; the other
    // answers one at a time, 5 ms each, so its latency grows with every call queued
    // and it never refuses. Sixteen callers: spread evenly, eight would queue on the
    // slow one (40 ms a call); capped, it holds one to three.
    let fast = fake_agent(Mode::Delay(5));
    let slow = fake_agent(Mode::Serial(5));
    let running = consumer(&[fast.addr, slow.addr], &["--lb", "adaptive"]);
    wait_ready(&running);
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..16)
        .map(|i| {
            let (addr, stop) = (running.http_addr(), stop.clone());
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.set_nodelay(true).expect("nodelay");
                let request = race_request(&format!("caller {i}"));
                let mut buf = [0u8; 4096];
                let mut calls = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    call_race(&mut s, &request, &mut buf);
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    // The cap is revised once a second: give it a few.
    let slow_addr = slow.addr.to_string();
    let mut cap = f64::MAX;
    test_support::wait::wait_until(Duration::from_secs(10), || {
        cap = upstream_gauge(&running, "consumer_upstream_limit", &slow_addr);
        cap <= 4.0
    });
    assert!(
        cap <= 4.0,
        "the slow provider-agent's limit stayed at {cap}"
    );
    // Capped, it holds few calls (the gauges are published once a second).
    let mut held = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1_050));
        held.push(upstream_gauge(
            &running,
            "consumer_upstream_inflight",
            &slow_addr,
        ));
    }
    stop.store(true, Ordering::Relaxed);
    let total: u64 = callers.into_iter().map(|c| c.join().expect("caller")).sum();
    assert!(total > 0);
    assert!(
        held.iter().all(|&n| n <= 4.0),
        "calls in flight on the slow provider-agent, once a second: {held:?}"
    );
    running.stop();
}
