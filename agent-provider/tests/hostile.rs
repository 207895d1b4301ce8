//! What a hostile or careless agent-protocol client can do to a provider-agent: routing
//! attachments of its own, services the agent does not serve, signatures that would
//! hold memory, a half-close with calls in flight, an idle connection.

mod common;

use std::io::Write;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use codec::agent::{self, SignatureRef, Status, MAX_NAME_LEN, MAX_TABLE_BYTES};
use codec::dubbo::{self, Serialization};
use codec::hessian2;
use common::*;

use agent_provider::config::SerializationArg;

fn start() -> (MockProvider, agent_provider::Running) {
    provider_and_agent(Serialization::Hessian2, SerializationArg::Hessian2)
}

fn define(c: &mut Client, call_id: u32, sig: SignatureRef<'_>) {
    let mut out = Vec::new();
    agent::encode_define(&mut out, call_id, sig).unwrap();
    c.stream.write_all(&out).unwrap();
}

fn hash_sig<'a>(service: &'a str, version: &'a str, group: &'a str) -> SignatureRef<'a> {
    SignatureRef {
        service,
        method: "hash",
        parameter_types: "Ljava/lang/String;",
        version,
        group,
    }
}

fn request(
    c: &mut Client,
    id: u64,
    call_id: u32,
    attachments: &[(&str, &str)],
    timeout_ms: u32,
) -> Resp {
    let mut args = Vec::new();
    hessian2::write_string(&mut args, "hi");
    let mut out = Vec::new();
    agent::encode_request(&mut out, id, call_id, timeout_ms, attachments, &args).unwrap();
    c.stream.write_all(&out).unwrap();
    c.read()
}

/// The Dubbo request bodies the provider received, decoded.
fn received(provider: &MockProvider) -> Vec<dubbo::RequestBody> {
    let frames = provider.received.lock().unwrap().clone();
    frames
        .iter()
        .map(|f| {
            dubbo::decode_request_body(f[2] & dubbo::SERIALIZATION_MASK, &f[dubbo::HEADER_LEN..])
                .expect("a request")
        })
        .collect()
}

#[test]
fn routing_attachments_of_the_caller_never_reach_the_provider() {
    let (provider, agent) = start();
    let mut c = Client::connect(agent.agent_addr());
    define(&mut c, 1, hash_sig(SERVICE, "", ""));
    let evil = [
        ("group", "evilgroup"),
        ("timeout", "999999"),
        ("dubbo", "9.9.9"),
        ("path", "com.evil.AdminService"),
        ("Interface", "com.evil.AdminService"),
        ("VERSION", "6.6.6"),
        ("trace-id", "kept"),
    ];
    let r = request(&mut c, 7, 1, &evil, 4000);
    assert_eq!(r.int(), codec::java::string_hash_code("hi"));
    let bodies = received(&provider);
    let body = bodies.last().expect("the provider got the call");
    assert_eq!(body.path, SERVICE);
    assert_eq!(body.version.as_deref(), Some("0.0.0"));
    let keys: Vec<&str> = body.attachments.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["path", "interface", "version", "trace-id", "timeout"],
        "{:?}",
        body.attachments
    );
    assert_eq!(body.attachment("path"), Some(SERVICE));
    assert_eq!(body.attachment("interface"), Some(SERVICE));
    assert_eq!(body.attachment("version"), Some("0.0.0"));
    assert_eq!(body.attachment("timeout"), Some("4000"));
    assert_eq!(body.attachment("trace-id"), Some("kept"));
    agent.stop();
}

#[test]
fn services_versions_and_groups_not_served_never_reach_the_provider() {
    let (provider, agent) = start();
    let mut c = Client::connect(agent.agent_addr());
    define(&mut c, 1, hash_sig(SERVICE, "", ""));
    define(&mut c, 2, hash_sig("com.evil.AdminService", "", ""));
    define(&mut c, 3, hash_sig(SERVICE, "2.0.0", ""));
    define(&mut c, 4, hash_sig(SERVICE, "", "evilgroup"));
    define(&mut c, 5, hash_sig(SERVICE, "*", "*"));
    for (id, call_id) in [(2, 2), (3, 3), (4, 4)] {
        let r = request(&mut c, id, call_id, &[], 4000);
        assert_eq!(r.id, id);
        assert_eq!(r.status, Status::Unavailable, "{}", r.text());
        assert!(r.text().contains("does not serve"), "{}", r.text());
    }
    // Served: as named, and through Dubbo's wildcard.
    assert_eq!(request(&mut c, 10, 1, &[], 4000).status, Status::Ok);
    assert_eq!(request(&mut c, 11, 5, &[], 4000).status, Status::Ok);
    let paths: Vec<String> = received(&provider).into_iter().map(|b| b.path).collect();
    assert_eq!(
        paths,
        [SERVICE, SERVICE],
        "only served calls reached the provider"
    );
    agent.stop();
}

/// VmRSS of this process (the in-process agent), KiB.
fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn signatures_a_connection_defines_are_bounded_and_refused_past_the_bound() {
    let (_provider, agent) = start();
    // A name over the limit: refused, connection closed, nothing kept.
    let mut c = Client::connect(agent.agent_addr());
    let long = "x".repeat(MAX_NAME_LEN + 1);
    define(&mut c, 0, hash_sig(&long, "", ""));
    assert!(c.is_closed(), "a DEFINE over the name limit closes");

    // Names within the limit, until the connection's bytes are spent: closed then.
    let before = rss_kb();
    let mut c = Client::connect(agent.agent_addr());
    let name = |i: u32| format!("{i:06}{}", "n".repeat(MAX_NAME_LEN - 6));
    let mut defined = 0;
    for i in 0..1_500u32 {
        let (s, m, v, g) = (name(i), name(i), name(i), name(i));
        let sig = SignatureRef {
            service: &s,
            method: &m,
            parameter_types: "",
            version: &v,
            group: &g,
        };
        let mut out = Vec::new();
        agent::encode_define(&mut out, i, sig).unwrap();
        if c.stream.write_all(&out).is_err() {
            break;
        }
        defined += 1;
    }
    assert!(c.is_closed(), "the DEFINE past the bytes bound closes");
    let per_sig = 4 * MAX_NAME_LEN;
    assert!(
        defined >= MAX_TABLE_BYTES / (per_sig + 200),
        "{defined} DEFINEs sent before the close"
    );
    let grown = rss_kb().saturating_sub(before);
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB");
    // Other connections are served all along.
    let mut ok = Client::connect(agent.agent_addr());
    ok.define_hash();
    assert_eq!(
        ok.call_hash(1, "a").int(),
        codec::java::string_hash_code("a")
    );
    agent.stop();
}

#[test]
fn a_consumer_that_half_closes_gets_its_answers() {
    let (provider, agent) = start();
    provider.set(Mode::Hash, Duration::from_millis(100));
    let mut c = Client::connect(agent.agent_addr());
    c.define_hash();
    for id in 1..=3 {
        c.send_hash(id, "half", 4000);
    }
    c.stream.shutdown(Shutdown::Write).unwrap();
    let mut ids: Vec<u64> = (0..3)
        .map(|_| {
            let r = c.read();
            assert_eq!(r.int(), codec::java::string_hash_code("half"));
            r.id
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3]);
    assert!(c.is_closed(), "closed once every answer is out");
    agent.stop();
}

#[test]
fn idle_agent_connections_are_closed_and_pings_keep_live_ones() {
    init_log();
    let provider = MockProvider::start("127.0.0.1:0", Serialization::Hessian2);
    let mut config = agent_config(provider.addr, SerializationArg::Hessian2);
    config.idle_timeout_secs = 1;
    let agent = agent_provider::start(config).unwrap();
    let mut idle = Client::connect(agent.agent_addr());
    let mut live = Client::connect(agent.agent_addr());
    let start = Instant::now();
    let mut id = 0;
    while start.elapsed() < Duration::from_millis(2_500) {
        id += 1;
        bench_ping(&mut live, id);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(idle.is_closed(), "the silent connection was closed");
    bench_ping(&mut live, id + 1);
    agent.stop();
    // The default bounds idle connections too.
    let defaults = agent_provider::Config::new(provider.addr, vec![SERVICE.into()]);
    assert_eq!(defaults.idle_timeout_secs, 60);
}

/// PING with `id`; the PONG must come back.
fn bench_ping(c: &mut Client, id: u64) {
    let mut out = Vec::new();
    agent::encode_ping(&mut out, id);
    c.stream.write_all(&out).unwrap();
    let mut got = [0u8; agent::HEADER_LEN];
    std::io::Read::read_exact(&mut c.stream, &mut got).expect("a PONG");
    let mut want = Vec::new();
    agent::encode_pong(&mut want, id);
    assert_eq!(got[..], want[..]);
}
