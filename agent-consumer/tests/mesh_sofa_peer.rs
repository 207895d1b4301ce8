//! The whole mesh against a real Dubbo provider written by someone else: the npm
//! `sofa-rpc-node` + `dubbo-remoting` provider (hessian2) in `tests/peers/`.
//!
//! consumer HTTP -> consumer-agent -> provider-agent -> sofa-rpc-node provider.
//! `.ci/setup` installs node and the peer; without them this test fails, it never skips.

mod util;

use std::time::{Duration, Instant};

use clap::Parser;
use codec::java::string_hash_code;
use test_support::net::free_port;
use util::*;

/// A provider-agent in front of the peer on `port`, registering `services` in `registry`.
fn provider_agent(port: u16, registry: &str, services: &[&str]) -> agent_provider::Running {
    let provider = format!("127.0.0.1:{port}");
    let mut args = vec![
        "provider-agent",
        "--listen",
        "127.0.0.1:0",
        "--provider",
        &provider,
        "--registry",
        registry,
    ];
    for s in services {
        args.extend(["--service", s]);
    }
    agent_provider::start(agent_provider::Config::parse_from(args)).expect("provider-agent")
}

/// The peer, a provider-agent in front of it and a consumer-agent, on one temporary
/// file registry.
struct PeerMesh {
    running: agent_consumer::Running,
    provider_agent: agent_provider::Running,
    _registry: tempfile::TempDir,
    _peer: Peer,
}

impl PeerMesh {
    /// Starts the mesh, the provider-agent registering `services` and the consumer-agent
    /// given `consumer_flags`; returns once the consumer-agent reaches the provider-agent.
    fn start(services: &[&str], consumer_flags: &[&str]) -> PeerMesh {
        let port = free_port().expect("a free port");
        let peer = start_peer(port);
        let registry = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}", registry.path().display());
        let provider_agent = provider_agent(port, &url, services);
        let running = consumer_with(&url, consumer_flags);
        wait_ready(&running);
        PeerMesh {
            running,
            provider_agent,
            _registry: registry,
            _peer: peer,
        }
    }

    fn stop(self) {
        self.running.stop();
        self.provider_agent.stop();
    }
}

#[test]
fn race_requests_through_both_agents_reach_sofa_rpc_node() {
    let mesh = PeerMesh::start(
        &["com.alibaba.dubbo.performance.demo.provider.IHelloService"],
        &[],
    );
    let end = Instant::now() + Duration::from_secs(10);
    let mut params: Vec<String> = vec!["".into(), "hello".into(), "mesh 你好 😀 +&=%".into()];
    params.extend((0..50).map(|i| "abc123XYZ".repeat(i)));
    for p in &params {
        let answers = exchange(mesh.running.http_addr(), &race_request(p), 1);
        assert_eq!(answers[0].status, 200, "{p:?}: {}", answers[0].body);
        assert_eq!(answers[0].body, string_hash_code(p).to_string(), "{p:?}");
        assert!(Instant::now() < end, "took too long");
    }
    mesh.stop();
}

/// One provider-agent in front of one provider exporting `com.example.Greeter` in two
/// versions, the second also in group `blue`: each call reaches the variant it names
/// (JSON fields, or headers for the form request); an unserved one is a clear 503.
#[test]
fn one_provider_agent_fronts_several_versions_and_groups() {
    let services = [
        "com.example.Greeter:1.0.0",
        "com.example.Greeter:2.0.0",
        "blue/com.example.Greeter:2.0.0",
    ];
    let mesh = PeerMesh::start(&services, &["--service", "com.example.Greeter"]);
    let addr = mesh.running.http_addr();
    let json = |version: &str, group: &str| {
        let body = format!(
            r#"{{"interface":"com.example.Greeter","method":"greet","parameterTypes":["java.lang.String"],"arguments":["ann"],"version":"{version}","group":"{group}"}}"#
        );
        let raw = format!(
            "POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer = exchange(addr, raw.as_bytes(), 1).remove(0);
        (answer.status, answer.body)
    };
    assert_eq!(json("1.0.0", ""), (200, r#""1.0.0/: hello ann""#.into()));
    assert_eq!(json("2.0.0", ""), (200, r#""2.0.0/: hello ann""#.into()));
    assert_eq!(
        json("2.0.0", "blue"),
        (200, r#""2.0.0/blue: hello ann""#.into())
    );
    // Dubbo's wildcard `*`: any served version (or group) that matches the rest.
    assert_eq!(json("*", ""), (200, r#""1.0.0/: hello ann""#.into()));
    assert_eq!(
        json("*", "blue"),
        (200, r#""2.0.0/blue: hello ann""#.into())
    );
    assert_eq!(json("2.0.0", "*"), (200, r#""2.0.0/: hello ann""#.into()));
    let (status, body) = json("*", "green");
    assert_eq!(status, 503, "{body}");
    let (status, body) = json("1.0.0", "blue");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("version 1.0.0 group blue"), "{body}");
    let (status, body) = json("", "");
    assert_eq!(status, 503, "no instance serves no version: {body}");

    let body = "interface=com.example.Greeter&method=greet&parameterTypesString=Ljava%2Flang%2FString%3B&parameter=bo";
    let form = format!(
        "POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         x-dubbo-version: 2.0.0\r\nx-dubbo-group: blue\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = exchange(addr, form.as_bytes(), 1).remove(0);
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "2.0.0/blue: hello bo")
    );
    mesh.stop();
}
