//! Registration follows the provider; admin endpoints; graceful stop drains.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use agent_provider::config::SerializationArg;
use codec::dubbo::Serialization;
use common::*;
use test_support::wait::assert_eventually;

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (code, body)
}

#[test]
fn registration_follows_the_provider() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    // A free port for the provider, not started yet.
    let provider_addr = test_support::net::free_addr().unwrap();
    let mut cfg = agent_config(provider_addr, SerializationArg::Hessian2);
    cfg.registry = Some(url.clone());
    cfg.weight = 150;
    cfg.admin = Some("127.0.0.1:0".parse().unwrap());
    let agent = agent_provider::start(cfg).unwrap();
    let admin = agent.admin_addr().unwrap();
    let advertised = agent.agent_addr().to_string();

    let (tx, rx) = mpsc::channel();
    let reg = registry::open(Some(&url)).unwrap();
    let _watch = reg
        .watch(SERVICE, move |list| {
            let _ = tx.send(list);
        })
        .unwrap();
    let wait_list = |want: usize| loop {
        let list = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("registry update");
        if list.len() == want {
            return list;
        }
    };
    // Provider down: not registered, unhealthy.
    std::thread::sleep(Duration::from_millis(300));
    assert!(rx.try_iter().all(|l| l.is_empty()));
    assert_eq!(http_get(admin, "/healthz").0, 503);

    let provider = MockProvider::start(&provider_addr.to_string(), Serialization::Hessian2);
    let list = wait_list(1);
    assert_eq!(list[0].addr, advertised);
    assert_eq!(list[0].weight, 150);
    assert_eq!(http_get(admin, "/healthz"), (200, "ok\n".into()));

    let mut c = Client::connect(agent.agent_addr());
    c.define_hash();
    assert_eq!(c.call_hash(1, "hello").int(), 99162322);
    let (code, metrics) = http_get(admin, "/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("provider_agent_requests_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("provider_agent_provider_up 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("provider_agent_latency_seconds_count 1\n"),
        "{metrics}"
    );

    provider.kill();
    wait_list(0);
    assert_eq!(http_get(admin, "/healthz").0, 503);

    let provider = MockProvider::start(&provider_addr.to_string(), Serialization::Hessian2);
    let list = wait_list(1);
    assert_eq!(list[0].addr, advertised);

    // Graceful stop deregisters first.
    agent.stop();
    wait_list(0);
    provider.kill();
}

#[test]
fn graceful_stop_drains_calls_in_flight() {
    init_log();
    let provider = MockProvider::start("127.0.0.1:0", Serialization::Hessian2);
    provider.set(Mode::Hash, Duration::from_millis(300));
    let agent =
        agent_provider::start(agent_config(provider.addr, SerializationArg::Hessian2)).unwrap();
    let m = agent.metrics().clone();
    assert_eventually("provider connection", SOON, || m.provider_up());
    let mut c = Client::connect(agent.agent_addr());
    c.define_hash();
    c.send_hash(1, "hello", 5000);
    assert_eventually("call at the provider", SOON, || {
        provider.received.lock().unwrap().len() == 1
    });
    let addr = agent.agent_addr();
    let stopper = std::thread::spawn(move || agent.stop());
    let r = c.read();
    assert_eq!(r.int(), 99162322, "the call in flight was answered");
    stopper.join().unwrap();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "no longer accepting"
    );
    provider.kill();
}

#[test]
fn heartbeats_both_ways() {
    init_log();
    // Our side: an idle connection gets a heartbeat after --heartbeat-secs.
    let provider = MockProvider::start("127.0.0.1:0", Serialization::Hessian2);
    let mut cfg = agent_config(provider.addr, SerializationArg::Hessian2);
    cfg.heartbeat_secs = 1;
    let agent = agent_provider::start(cfg).unwrap();
    assert_eventually("a heartbeat", SOON, || {
        provider
            .heartbeats
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    });
    agent.stop();
    provider.kill();

    // The provider's side: its heartbeat request is answered.
    let (agent, mut s) = agent_with_bare_provider();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    codec::dubbo::encode_heartbeat_request(&mut out, 0x1234);
    s.write_all(&out).unwrap();
    let mut reply = [0u8; 17];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(
        reply,
        [0xda, 0xbb, 0x22, 0x14, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0, 0, 0, 1, b'N']
    );
    agent.stop();
}

#[test]
fn several_loops_and_provider_connections() {
    init_log();
    let provider = MockProvider::start("127.0.0.1:0", Serialization::Hessian2);
    let mut cfg = agent_config(provider.addr, SerializationArg::Hessian2);
    cfg.loops = 2;
    cfg.provider_conns = 2;
    let agent = agent_provider::start(cfg).unwrap();
    let m = agent.metrics().clone();
    assert_eventually("provider connections", SOON, || m.provider_up());
    let addr = agent.agent_addr();
    let clients: Vec<_> = (0..6)
        .map(|k| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.define_hash();
                for i in 0..50u64 {
                    let s = format!("{k}-{i}");
                    assert_eq!(c.call_hash(i, &s).int(), codec::java::string_hash_code(&s));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(m.requests(), 300);
    assert_eq!(m.responses(codec::agent::Status::Ok), 300);
    agent.stop();
    provider.kill();
}

#[test]
fn readonly_event_stops_new_calls_on_that_connection() {
    init_log();
    let (agent, mut s) = agent_with_bare_provider();
    let m = agent.metrics().clone();
    assert_eventually("provider connection", SOON, || m.provider_up());
    // Dubbo's read-only event: request, one-way, event, hessian2 string "R".
    s.write_all(&readonly_event(0xa2, 1)).unwrap();
    wait_until_calls_are_refused(&agent);
    agent.stop();
}

/// Dubbo's read-only event (hessian2 string "R") with these header flags and id.
fn readonly_event(flags: u8, id: i64) -> Vec<u8> {
    let mut out = Vec::new();
    codec::dubbo::write_header(&mut out, flags, 0, id, 2);
    out.extend_from_slice(&[0x01, b'R']);
    out
}

/// Waits until the agent refuses calls (its only provider connection is read-only).
fn wait_until_calls_are_refused(agent: &agent_provider::Running) {
    let mut c = Client::connect(agent.agent_addr());
    c.define_hash();
    assert_eventually("read-only noticed", SOON, || {
        c.call_hash(1, "x").status == codec::agent::Status::Unavailable
    });
}

#[test]
fn a_two_way_readonly_event_is_answered_and_acted_on() {
    init_log();
    let (agent, mut s) = agent_with_bare_provider();
    let m = agent.metrics().clone();
    assert_eventually("provider connection", SOON, || m.provider_up());
    // The same event sent two-way (0x40): it wants a reply, and still means read-only.
    s.write_all(&readonly_event(0xe2, 7)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reply = [0u8; 17];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(
        &reply[..4],
        [0xda, 0xbb, 0x22, 0x14],
        "an event response, status OK"
    );
    assert_eq!(&reply[4..12], 7u64.to_be_bytes(), "to event 7");
    wait_until_calls_are_refused(&agent);
    agent.stop();
}

#[test]
fn a_provider_busy_on_long_calls_gets_heartbeats_and_stays_connected() {
    init_log();
    let provider = MockProvider::start("127.0.0.1:0", Serialization::Hessian2);
    provider.set(Mode::Silent, Duration::ZERO);
    let mut cfg = agent_config(provider.addr, SerializationArg::Hessian2);
    cfg.heartbeat_secs = 1;
    let agent = agent_provider::start(cfg).unwrap();
    let m = agent.metrics().clone();
    assert_eventually("provider connection", SOON, || m.provider_up());
    let mut c = Client::connect(agent.agent_addr());
    c.define_hash();
    // Calls keep being written for 4.5 s, past the 3 s silence limit, and none is
    // answered yet: reads are idle, so the agent heartbeats, and the provider's replies
    // show it alive. (Heartbeating only when both directions idled cut it off.)
    let start = std::time::Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_millis(4500) {
        sent += 1;
        c.send_hash(sent, "slow", 60_000);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        provider
            .heartbeats
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0,
        "no heartbeat while calls were being written"
    );
    assert!(m.provider_up(), "the busy provider was cut off");
    assert_eq!(
        m.inflight() as u64,
        sent,
        "calls were failed by a lost connection"
    );
    agent.stop();
    provider.kill();
}

#[test]
fn a_call_arriving_just_after_a_stop_is_answered_unavailable() {
    init_log();
    let provider = MockProvider::start("127.0.0.1:0", Serialization::Hessian2);
    let agent =
        agent_provider::start(agent_config(provider.addr, SerializationArg::Hessian2)).unwrap();
    let addr = agent.agent_addr();
    let m = agent.metrics().clone();
    assert_eventually("provider connection", SOON, || m.provider_up());
    let mut c = Client::connect(addr);
    c.define_hash();
    assert_eq!(c.call_hash(1, "hello").int(), 99162322);
    // Nothing in flight: the stop deregisters and closes the listener at once, but the
    // loop still answers for a moment, for a consumer-agent that has not yet seen the
    // deregistration: with UNAVAILABLE, which it retries elsewhere.
    let stopper = std::thread::spawn(move || agent.stop());
    assert_eventually("the listener closed", SOON, || {
        std::net::TcpStream::connect(addr).is_err()
    });
    let r = c.call_hash(2, "late");
    assert_eq!(r.status, codec::agent::Status::Unavailable, "{}", r.text());
    assert!(r.text().contains("shutting down"), "{}", r.text());
    stopper.join().unwrap();
    provider.kill();
}

#[test]
fn a_failed_registration_is_retried() {
    init_log();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    // A file where the service's directory must go: registering fails.
    let blocker = dir.path().join(SERVICE);
    std::fs::write(&blocker, b"not a directory").unwrap();
    let provider = MockProvider::start("127.0.0.1:0", Serialization::Hessian2);
    let mut cfg = agent_config(provider.addr, SerializationArg::Hessian2);
    cfg.registry = Some(url.clone());
    let agent = agent_provider::start(cfg).unwrap();
    let m = agent.metrics().clone();
    assert_eventually("provider connection", SOON, || m.provider_up());
    // Let the first attempt (on the provider coming up) fail, then clear the way.
    std::thread::sleep(Duration::from_millis(300));
    std::fs::remove_file(&blocker).unwrap();
    let (tx, rx) = mpsc::channel();
    let reg = registry::open(Some(&url)).unwrap();
    let _watch = reg
        .watch(SERVICE, move |list| {
            let _ = tx.send(list);
        })
        .unwrap();
    let advertised = agent.agent_addr().to_string();
    loop {
        let list = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("registered after the failure");
        if list.iter().any(|i| i.addr == advertised) {
            break;
        }
    }
    agent.stop();
    provider.kill();
}
