//! The call path end to end: agent client -> provider-agent -> mock Dubbo provider.

mod common;

use std::time::Duration;

use agent_provider::config::SerializationArg;
use codec::dubbo::Serialization;
use common::*;
use test_support::wait::assert_eventually;

fn start(ser: Serialization, arg: SerializationArg) -> (MockProvider, agent_provider::Running) {
    provider_and_agent(ser, arg)
}

#[test]
fn hessian2_call_ok() {
    let (provider, agent) = start(Serialization::Hessian2, SerializationArg::Hessian2);
    let mut c = Client::connect(agent.agent_addr());
    c.define_hash();
    let r = c.call_hash(7, "hello");
    assert_eq!(r.id, 7);
    assert_eq!(r.int(), 99162322);
    let got = provider.received.lock().unwrap()[0].clone();
    assert_eq!(got[2], 0xc2, "hessian2 two-way request");
    agent.stop();
    provider.kill();
}

#[test]
fn fastjson_call_ok_and_wire_layout() {
    let (provider, agent) = start(Serialization::Fastjson, SerializationArg::Fastjson);
    let mut c = Client::connect(agent.agent_addr());
    c.define_hash();
    let r = c.call_hash(1, "hello \"world\"\n");
    assert_eq!(r.int(), codec::java::string_hash_code("hello \"world\"\n"));
    let got = provider.received.lock().unwrap()[0].clone();
    assert_eq!(
        got[..4],
        [0xda, 0xbb, 0xc6, 0x00],
        "request, two-way, fastjson"
    );
    let body = std::str::from_utf8(&got[16..]).unwrap();
    let lines: Vec<&str> = body.split_terminator('\n').collect();
    assert_eq!(lines.len(), 7, "{body}");
    assert_eq!(lines[0], "\"2.0.2\"");
    assert_eq!(lines[1], format!("\"{SERVICE}\""));
    assert_eq!(lines[2], "\"0.0.0\"");
    assert_eq!(lines[3], "\"hash\"");
    assert_eq!(lines[4], "\"Ljava/lang/String;\"");
    assert_eq!(lines[5], r#""hello \"world\"\n""#);
    assert!(
        lines[6].starts_with(&format!("{{\"path\":\"{SERVICE}\"")),
        "{}",
        lines[6]
    );
    assert!(lines[6].contains("\"timeout\":\"5000\""), "{}", lines[6]);
    assert!(body.ends_with("}\n"));
    agent.stop();
    provider.kill();
}

#[test]
fn pipelined_calls_matched_by_id() {
    let (provider, agent) = start(Serialization::Hessian2, SerializationArg::Hessian2);
    let mut c = Client::connect(agent.agent_addr());
    c.define_hash();
    let mut batch = Vec::new();
    for i in 0..150u64 {
        batch.extend_from_slice(&hash_request(1000 + i, &format!("s{i}"), 5000));
    }
    use std::io::Write;
    c.stream.write_all(&batch).unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..150 {
        let r = c.read();
        let i = r.id - 1000;
        assert_eq!(r.int(), codec::java::string_hash_code(&format!("s{i}")));
        assert!(seen.insert(r.id));
    }
    agent.stop();
    provider.kill();
}

#[test]
fn max_inflight_exceeded_is_overloaded() {
    init_log();
    let provider = MockProvider::start("127.0.0.1:0", Serialization::Hessian2);
    provider.set(Mode::Hash, std::time::Duration::from_millis(300));
    let mut cfg = agent_config(provider.addr, SerializationArg::Hessian2);
    cfg.max_inflight = 2;
    let agent = agent_provider::start(cfg).unwrap();
    let m = agent.metrics().clone();
    assert_eventually("provider connection", SOON, || m.provider_up());
    let mut c = Client::connect(agent.agent_addr());
    c.define_hash();
    for i in 0..5 {
        c.send_hash(i, "x", 5000);
    }
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = c.read();
        statuses.push((r.id, r.status));
    }
    // The three refused calls come back at once, before the two slow ones.
    assert_eq!(
        statuses[..3].iter().map(|s| s.1).collect::<Vec<_>>(),
        vec![codec::agent::Status::Overloaded; 3]
    );
    assert!(statuses[3..]
        .iter()
        .all(|s| s.1 == codec::agent::Status::Ok));
    assert_eq!(provider.received.lock().unwrap().len(), 2);
    assert_eq!(m.responses(codec::agent::Status::Overloaded), 3);
    agent.stop();
    provider.kill();
}

/// `--max-inflight` bounds the provider's one thread pool, so it is one budget for all
/// loops: a connection whose loop carries every call may use all of it, and a call
/// beyond it is refused on any loop.
#[test]
fn max_inflight_is_one_budget_for_all_loops() {
    init_log();
    let provider = MockProvider::start("127.0.0.1:0", Serialization::Hessian2);
    provider.set(Mode::Hash, std::time::Duration::from_millis(200));
    let mut cfg = agent_config(provider.addr, SerializationArg::Hessian2);
    cfg.loops = 2;
    cfg.max_inflight = 4;
    let agent = agent_provider::start(cfg).unwrap();
    let m = agent.metrics().clone();
    assert_eventually("provider connections", SOON, || m.provider_up());
    let mut first = Client::connect(agent.agent_addr());
    first.define_hash();
    for i in 0..4 {
        first.send_hash(i, "x", 5000);
    }
    assert_eventually("four calls in flight", SOON, || m.inflight() == 4);
    let mut second = Client::connect(agent.agent_addr());
    second.define_hash();
    for c in [&mut first, &mut second] {
        c.send_hash(9, "x", 5000);
        let r = c.read();
        assert_eq!((r.id, r.status), (9, codec::agent::Status::Overloaded));
    }
    for _ in 0..4 {
        assert_eq!(first.read().int(), codec::java::string_hash_code("x"));
    }
    assert_eq!(provider.received.lock().unwrap().len(), 4);
    agent.stop();
    provider.kill();
}

#[test]
fn provider_errors_map_to_statuses() {
    let (provider, agent) = start(Serialization::Hessian2, SerializationArg::Hessian2);
    let mut c = Client::connect(agent.agent_addr());
    c.define_hash();
    provider.set(
        Mode::Status(100, "pool exhausted".into()),
        Default::default(),
    );
    let r = c.call_hash(1, "a");
    assert_eq!(r.status, codec::agent::Status::Overloaded);
    assert!(r.text().contains("pool exhausted"), "{}", r.text());
    provider.set(Mode::Exception("boom".into()), Default::default());
    let r = c.call_hash(2, "a");
    assert_eq!(r.status, codec::agent::Status::Exception);
    assert_eq!(
        r.value().to_json().to_string(),
        r#"{"class":"java.lang.RuntimeException","message":"boom"}"#
    );
    provider.set(
        Mode::Status(80, "no such method".into()),
        Default::default(),
    );
    let r = c.call_hash(3, "a");
    assert_eq!(r.status, codec::agent::Status::ProviderError);
    assert_eq!(r.text(), "no such method");
    // Dubbo's other error statuses, by what they say about the call.
    for (dubbo_status, status) in [
        (31, codec::agent::Status::Timeout),
        (30, codec::agent::Status::Timeout),
        (40, codec::agent::Status::BadRequest),
        (60, codec::agent::Status::Unavailable),
        (70, codec::agent::Status::ProviderError),
    ] {
        provider.set(
            Mode::Status(dubbo_status, format!("status {dubbo_status}")),
            Default::default(),
        );
        let r = c.call_hash(3, "a");
        assert_eq!(r.status, status, "for Dubbo status {dubbo_status}");
        assert_eq!(r.text(), format!("status {dubbo_status}"));
    }
    provider.set(Mode::Hash, Default::default());
    assert_eq!(c.call_hash(4, "hello").int(), 99162322);
    agent.stop();
    provider.kill();
}

#[test]
fn fastjson_exception_is_described() {
    let (provider, agent) = start(Serialization::Fastjson, SerializationArg::Fastjson);
    let mut c = Client::connect(agent.agent_addr());
    c.define_hash();
    provider.set(Mode::Exception("bad input".into()), Default::default());
    let r = c.call_hash(1, "a");
    assert_eq!(r.status, codec::agent::Status::Exception);
    assert_eq!(
        r.value().to_json().to_string(),
        r#"{"class":"java.lang.RuntimeException","message":"bad input"}"#
    );
    agent.stop();
    provider.kill();
}

#[test]
fn silent_provider_times_out() {
    let (provider, agent) = start(Serialization::Hessian2, SerializationArg::Hessian2);
    let mut c = Client::connect(agent.agent_addr());
    c.define_hash();
    provider.set(Mode::Silent, Default::default());
    let t0 = std::time::Instant::now();
    c.send_hash(9, "a", 200);
    let r = c.read();
    let took = t0.elapsed();
    assert_eq!((r.id, r.status), (9, codec::agent::Status::Timeout));
    assert!(took >= std::time::Duration::from_millis(190), "{took:?}");
    assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    // The timeout went to the provider as Dubbo's `timeout` attachment.
    let frame = provider.received.lock().unwrap()[0].clone();
    let body = codec::dubbo::decode_request_body(2, &frame[16..]).unwrap();
    assert_eq!(body.attachment("timeout"), Some("200"));
    assert_eq!(body.attachment("interface"), Some(SERVICE));
    assert_eq!(agent.metrics().inflight(), 0);
    agent.stop();
    provider.kill();
}

#[test]
fn provider_killed_mid_call_then_recovers() {
    let (provider, agent) = start(Serialization::Hessian2, SerializationArg::Hessian2);
    let addr = provider.addr;
    let mut c = Client::connect(agent.agent_addr());
    c.define_hash();
    provider.set(Mode::Silent, Default::default());
    c.send_hash(1, "a", 10_000);
    c.send_hash(2, "b", 10_000);
    assert_eventually("calls at the provider", SOON, || {
        provider.received.lock().unwrap().len() == 2
    });
    provider.kill();
    let a = c.read();
    let b = c.read();
    // The provider had both calls and may have run them: not UNAVAILABLE, which the
    // consumer-agent would retry on another provider.
    assert_eq!(
        a.status,
        codec::agent::Status::ProviderError,
        "{}",
        a.text()
    );
    assert_eq!(b.status, codec::agent::Status::ProviderError);
    assert!(a.text().contains("may have run"), "{}", a.text());
    // While it is down, calls are refused at once.
    let m = agent.metrics().clone();
    assert_eventually("provider down", SOON, || !m.provider_up());
    assert_eq!(
        c.call_hash(3, "c").status,
        codec::agent::Status::Unavailable
    );
    // Back on the same port: the agent reconnects and calls succeed again.
    let provider = MockProvider::start(&addr.to_string(), Serialization::Hessian2);
    assert_eventually("reconnect", Duration::from_secs(10), || m.provider_up());
    assert_eq!(c.call_hash(4, "hello").int(), 99162322);
    agent.stop();
    provider.kill();
}

#[test]
fn garbage_closes_only_that_connection() {
    let (provider, agent) = start(Serialization::Hessian2, SerializationArg::Hessian2);
    let mut good = Client::connect(agent.agent_addr());
    good.define_hash();
    assert_eq!(good.call_hash(1, "hello").int(), 99162322);
    let mut bad = Client::connect(agent.agent_addr());
    use std::io::Write;
    bad.stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(bad.is_closed());
    // A frame with a good header but a truncated REQUEST body: BAD_REQUEST, then closed.
    let mut bad2 = Client::connect(agent.agent_addr());
    let mut frame = hash_request(77, "x", 0);
    frame[14..18].copy_from_slice(&4u32.to_be_bytes());
    frame.truncate(18 + 4);
    bad2.stream.write_all(&frame).unwrap();
    let r = bad2.read();
    assert_eq!((r.id, r.status), (77, codec::agent::Status::BadRequest));
    assert!(bad2.is_closed());
    assert_eq!(good.call_hash(2, "hello").int(), 99162322);
    agent.stop();
    provider.kill();
}

#[test]
fn unknown_call_id_is_bad_request_and_ping_pongs() {
    let (provider, agent) = start(Serialization::Hessian2, SerializationArg::Hessian2);
    let mut c = Client::connect(agent.agent_addr());
    let r = c.call_hash(5, "x"); // call id 1 never defined
    assert_eq!((r.id, r.status), (5, codec::agent::Status::BadRequest));
    let mut out = Vec::new();
    codec::agent::encode_ping(&mut out, 42);
    use std::io::{Read, Write};
    c.stream.write_all(&out).unwrap();
    let mut pong = [0u8; 18];
    c.stream.read_exact(&mut pong).unwrap();
    assert_eq!(
        codec::agent::decode(&pong).unwrap(),
        codec::Decoded::Complete {
            msg: codec::agent::Frame::Pong { id: 42 },
            consumed: 18
        }
    );
    c.define_hash();
    assert_eq!(c.call_hash(6, "hello").int(), 99162322);
    agent.stop();
    provider.kill();
}

#[test]
fn a_provider_that_stops_reading_gets_no_more_calls() {
    init_log();
    // A "provider" that accepts and never reads: what is written to it piles up in the
    // kernel's buffers, then in the agent's output for that connection.
    let (agent, _held) = agent_with_bare_provider();
    let m = agent.metrics().clone();
    assert_eventually("provider connection", SOON, || m.provider_up());
    let mut c = Client::connect(agent.agent_addr());
    c.define_hash();
    // 400 calls of 64 KiB: 25 MiB, past the kernel's buffers and the high watermark.
    let big = "x".repeat(64 * 1024);
    for id in 1..=400 {
        c.send_hash(id, &big, 60_000);
    }
    // No call is answered by the provider; the first answer is the agent refusing one
    // once the connection is congested, as OVERLOADED (retried elsewhere: not started).
    let r = c.read();
    assert_eq!(r.status, codec::agent::Status::Overloaded, "{}", r.text());
    assert!(r.text().contains("not reading"), "{}", r.text());
    agent.stop();
}

#[test]
fn a_result_with_back_references_reaches_the_consumer_as_the_provider_wrote_it() {
    let (provider, agent) = start(Serialization::Hessian2, SerializationArg::Hessian2);
    // [L, L, M] where L is an empty list (object #1), the second L a back-reference to
    // it, and M (object #2) a map whose "self" refers to M itself. Decoding resolves the
    // second L to a copy; encoding that again made the copy object #2, so M's "self"
    // pointed at the list.
    let value = vec![
        0x7b, // fixed-length untyped list of 3 (#0)
        0x78, // an empty list (#1)
        0x51, 0x91, // back-reference to #1
        b'H', 0x04, b's', b'e', b'l', b'f', 0x51, 0x92, b'Z', // map #2, "self" -> #2
    ];
    provider.set(Mode::RawValue(value.clone()), Default::default());
    let mut c = Client::connect(agent.agent_addr());
    c.define_hash();
    let r = c.call_hash(1, "a");
    assert_eq!(r.status, codec::agent::Status::Ok, "{}", r.text());
    assert_eq!(r.payload, value);
    agent.stop();
    provider.kill();
}
