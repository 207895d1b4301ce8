//! The race's request path allocates nothing in the consumer-agent's loop: once warm,
//! parsing the HTTP request, encoding the agent request, matching the answer and writing
//! the HTTP response make no heap allocation on the loop thread.

mod util;

use test_support::alloc::Counting;
use util::*;

/// Counts the consumer-agent's threads (its loops are `consumer-N`), not the test's.
#[global_allocator]
static GLOBAL: Counting = Counting::threads_named("consumer-");

#[test]
fn race_requests_on_a_warm_connection_allocate_nothing_on_the_loop() {
    let agent = fake_agent(Mode::Hash);
    let running = consumer(&[agent.addr], &["--loops", "1"]);
    wait_ready(&running);
    let during = allocations_in_race_calls(running.http_addr(), || GLOBAL.allocations());
    assert_eq!(during, 0, "loop allocations during 1,000 race requests");
    running.stop();
}
