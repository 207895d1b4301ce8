//! The whole mesh against a real Dubbo provider written by someone else: the npm
//! `sofa-rpc-node` + `dubbo-remoting` provider (hessian2) in `tests/peers/`.
//!
//! consumer HTTP -> consumer-agent -> provider-agent -> sofa-rpc-node provider.
//! `.ci/setup` installs node and the peer; without them this test fails, it never skips.

mod util;

use std::time::{Duration, Instant};

use clap::Parser;
use codec::java::string_hash_code;
use util::*;

#[test]
fn race_requests_through_both_agents_reach_sofa_rpc_node() {
    let port = free_port();
    let _peer = start_peer(port);
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().display());
    let provider_port = port.to_string();
    let provider_addr = format!("127.0.0.1:{provider_port}");
    let agent_port = free_port().to_string();
    let listen = format!("127.0.0.1:{agent_port}");
    let provider_agent = agent_provider::run(agent_provider::Config::parse_from([
        "provider-agent",
        "--listen",
        &listen,
        "--provider",
        &provider_addr,
        "--registry",
        &url,
        "--service",
        "com.alibaba.dubbo.performance.demo.provider.IHelloService",
        "--dubbo-version",
        "2.0.2",
    ]))
    .expect("provider-agent");
    let running = consumer_with(&url, &[]);
    wait_ready(&running);
    let end = Instant::now() + Duration::from_secs(10);
    let mut params: Vec<String> = vec!["".into(), "hello".into(), "mesh 你好 😀 +&=%".into()];
    params.extend((0..50).map(|i| "abc123XYZ".repeat(i)));
    for p in &params {
        let answers = exchange(running.http_addr, &race_request(p), 1);
        assert_eq!(answers[0].status, 200, "{p:?}: {}", answers[0].body);
        assert_eq!(answers[0].body, string_hash_code(p).to_string(), "{p:?}");
        assert!(Instant::now() < end, "took too long");
    }
    running.stop();
    provider_agent.stop();
}
