//! The call path end to end: agent client -> provider-agent -> mock Dubbo provider.

mod common;

use agent_provider::config::SerializationArg;
use codec::dubbo::Serialization;
use common::*;

fn start(ser: Serialization, arg: SerializationArg) -> (MockProvider, agent_provider::AgentHandle) {
    init_log();
    let provider = MockProvider::start("127.0.0.1:0", ser);
    let agent = agent_provider::run(agent_config(provider.addr, arg)).unwrap();
    let m = agent.metrics().clone();
    wait_for(5, "provider connection", || m.provider_up());
    (provider, agent)
}

#[test]
fn hessian2_call_ok() {
    let (provider, agent) = start(Serialization::Hessian2, SerializationArg::Hessian2);
    let mut c = Client::connect(agent.local_addr());
    c.define_hash();
    let r = c.call_hash(7, "hello");
    assert_eq!(r.id, 7);
    assert_eq!(r.int(), 99162322);
    let got = provider.received.lock().unwrap()[0].clone();
    assert_eq!(got[2], 0xc2, "hessian2 two-way request");
    agent.stop();
    provider.kill();
}
