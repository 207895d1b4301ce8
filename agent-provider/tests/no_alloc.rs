//! The call path allocates nothing in the provider-agent's loop: once warm, decoding an
//! agent request, encoding the Dubbo request, matching the Dubbo answer and encoding the
//! agent response make no heap allocation on the loop thread; nor does checking the call
//! against an authorization policy (`--authz`).

mod common;

use common::*;
use test_support::alloc::Counting;
use test_support::wait::assert_eventually;

/// Counts the provider-agent's threads (its loops are `provider-agent-N`, its control
/// thread, which watches the policy file, `provider-agent-control`), not the test's.
#[global_allocator]
static GLOBAL: Counting = Counting::threads_named("provider-agent");

/// Calls on a warm connection of an agent started with `config` allocate nothing.
fn warm_calls_allocate_nothing(mut config: agent_provider::Config) {
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
    // Across a check of the policy file (once a second), and an admission window.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    for id in 3000..3100 {
        assert_eq!(c.call_hash(id, "hello").int(), 99162322);
    }
    let during = GLOBAL.allocations() - before;
    assert_eq!(during, 0, "allocations during 1,100 calls and a second");
    agent.stop();
}

#[test]
fn calls_on_a_warm_connection_allocate_nothing_on_the_loop() {
    let provider = MockProvider::start("127.0.0.1:0", codec::dubbo::Serialization::Hessian2);
    let config = || {
        agent_config(
            provider.addr,
            agent_provider::config::SerializationArg::Hessian2,
        )
    };
    // Without a policy, then with one (the agents one after the other: both count).
    warm_calls_allocate_nothing(config());
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("authz.json");
    std::fs::write(
        &policy,
        format!(
            r#"{{"rules": [
                {{"from": ["spiffe://prod.example/ns/shop/*"], "services": ["*"], "methods": ["*"]}},
                {{"from": ["anonymous"], "services": ["com.example.Health"], "methods": ["ping"]}},
                {{"from": ["anonymous"], "services": ["{SERVICE}:*"], "methods": ["hash"]}}
            ]}}"#
        ),
    )
    .unwrap();
    let mut with_policy = config();
    with_policy.authz = Some(policy);
    warm_calls_allocate_nothing(with_policy);
    provider.kill();
}
