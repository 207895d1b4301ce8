//! The call path allocates nothing in the provider-agent's loop: once warm, decoding an
//! agent request, encoding the Dubbo request, matching the Dubbo answer and encoding the
//! agent response make no heap allocation on the loop thread.

mod common;

use common::*;
use test_support::alloc::Counting;
use test_support::wait::assert_eventually;

/// Counts the provider-agent's threads (its loops are `provider-agent-N`), not the test's.
#[global_allocator]
static GLOBAL: Counting = Counting::threads_named("provider-agent");

#[test]
fn calls_on_a_warm_connection_allocate_nothing_on_the_loop() {
    let provider = MockProvider::start("127.0.0.1:0", codec::dubbo::Serialization::Hessian2);
    let mut config = agent_config(
        provider.addr,
        agent_provider::config::SerializationArg::Hessian2,
    );
    config.loops = 1;
    let agent = agent_provider::start(config).unwrap();
    let m = agent.metrics().clone();
    assert_eventually("provider connection", SOON, || m.provider_up());
    let mut c = Client::connect(agent.agent_addr());
    c.define_hash();
    // Warm: buffers, tables and the timer heap (cancelled timeouts are swept at about
    // 1,024 entries) at their working size.
    for id in 0..2000 {
        assert_eq!(c.call_hash(id, "hello").int(), 99162322);
    }
    let before = GLOBAL.allocations();
    assert!(
        before > 0,
        "no allocation counted while warming: wrong thread name?"
    );
    for id in 2000..3000 {
        assert_eq!(c.call_hash(id, "hello").int(), 99162322);
    }
    let during = GLOBAL.allocations() - before;
    assert_eq!(during, 0, "loop allocations during 1,000 calls");
    agent.stop();
    provider.kill();
}
