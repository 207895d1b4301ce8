//! The provider-agent's limits, each set low and shown enforced with a clear answer or
//! a close: connections per loop, frame size, idle agent connections, calls in flight
//! per agent connection (`--max-inflight` is shown in `calls.rs`).

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use agent_provider::config::SerializationArg;
use codec::agent::Status;
use codec::dubbo::Serialization;
use common::*;
use test_support::net::closed_within;
use test_support::wait::assert_eventually;

fn start(
    tune: impl FnOnce(&mut agent_provider::Config),
) -> (MockProvider, agent_provider::Running) {
    init_log();
    let provider = MockProvider::start("127.0.0.1:0", Serialization::Hessian2);
    let mut cfg = agent_config(provider.addr, SerializationArg::Hessian2);
    tune(&mut cfg);
    let agent = agent_provider::start(cfg).unwrap();
    let m = agent.metrics().clone();
    assert_eventually("provider connection", SOON, || m.provider_up());
    (provider, agent)
}

/// A client that has just PINGed successfully, i.e. is being served.
fn served(c: &mut Client, id: u64) -> bool {
    let mut out = Vec::new();
    codec::agent::encode_ping(&mut out, id);
    if c.stream.write_all(&out).is_err() {
        return false;
    }
    let mut got = [0u8; codec::agent::HEADER_LEN];
    std::io::Read::read_exact(&mut c.stream, &mut got).is_ok()
}

#[test]
fn connections_beyond_max_connections_are_closed() {
    // 3 per loop: the provider connection and two agent connections.
    let (provider, agent) = start(|c| c.max_connections = 3);
    let mut first = Client::connect(agent.agent_addr());
    let mut second = Client::connect(agent.agent_addr());
    assert!(served(&mut first, 1) && served(&mut second, 2));
    let mut third = Client::connect(agent.agent_addr());
    assert!(
        closed_within(&mut third.stream, Duration::from_secs(3)),
        "the connection over the limit is closed"
    );
    assert!(served(&mut first, 3), "the others are still served");
    drop(first);
    // A slot freed: a new connection is served again.
    assert_eventually("a new connection served", SOON, || {
        let mut c = Client::connect(agent.agent_addr());
        c.stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        served(&mut c, 4)
    });
    agent.stop();
    provider.kill();
}

#[test]
fn frames_over_max_frame_are_refused_and_closed() {
    let (provider, agent) = start(|c| c.max_frame = 1024);
    let mut c = Client::connect(agent.agent_addr());
    c.define_hash();
    let r = c.call_hash(1, &"a".repeat(900));
    assert_eq!(r.status, Status::Ok, "a frame under the limit is served");
    c.send_hash(2, &"a".repeat(2000), 5000);
    let r = c.read();
    assert_eq!((r.id, r.status), (2, Status::BadRequest));
    assert!(r.text().contains("--max-frame 1024"), "{}", r.text());
    assert!(
        closed_within(&mut c.stream, Duration::from_secs(3)),
        "then the connection is closed"
    );
    let mut other = Client::connect(agent.agent_addr());
    other.define_hash();
    assert_eq!(other.call_hash(3, "x").status, Status::Ok);
    agent.stop();
    provider.kill();
}

#[test]
fn idle_agent_connections_are_closed_after_the_timeout() {
    let (provider, agent) = start(|c| c.idle_timeout_secs = 1);
    let mut idle = Client::connect(agent.agent_addr());
    let mut busy = Client::connect(agent.agent_addr());
    busy.define_hash();
    // A call in flight longer than the timeout keeps its connection open.
    provider.set(Mode::Hash, Duration::from_millis(2500));
    busy.send_hash(1, "slow", 5000);
    let t = Instant::now();
    assert!(
        closed_within(&mut idle.stream, Duration::from_secs(4)),
        "the idle connection is closed"
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?} for a 1 s timeout"
    );
    let r = busy.read();
    assert_eq!(
        (r.id, r.status),
        (1, Status::Ok),
        "the busy one is answered"
    );
    agent.stop();
    provider.kill();
}

#[test]
fn calls_over_max_conn_inflight_are_overloaded_on_that_connection_only() {
    let (provider, agent) = start(|c| c.max_conn_inflight = 2);
    provider.set(Mode::Hash, Duration::from_millis(300));
    let mut c = Client::connect(agent.agent_addr());
    c.define_hash();
    for i in 0..5 {
        c.send_hash(i, "x", 5000);
    }
    let mut other = Client::connect(agent.agent_addr());
    other.define_hash();
    other.send_hash(100, "y", 5000);
    let statuses: Vec<(u64, Status)> = (0..5)
        .map(|_| c.read())
        .map(|r| {
            if r.status == Status::Overloaded {
                assert!(r.text().contains("--max-conn-inflight"), "{}", r.text());
            }
            (r.id, r.status)
        })
        .collect();
    // The three over the limit come back at once, before the two slow ones.
    assert_eq!(
        statuses.iter().map(|s| s.1).collect::<Vec<_>>(),
        [
            Status::Overloaded,
            Status::Overloaded,
            Status::Overloaded,
            Status::Ok,
            Status::Ok
        ]
    );
    let r = other.read();
    assert_eq!(
        (r.id, r.status),
        (100, Status::Ok),
        "another connection has its own limit"
    );
    // Answers free the slots.
    assert_eq!(c.call_hash(9, "again").status, Status::Ok);
    agent.stop();
    provider.kill();
}
