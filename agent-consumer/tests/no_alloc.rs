//! The race's request path allocates nothing in the consumer-agent's loop: once warm,
//! parsing the HTTP request, encoding the agent request, matching the answer and writing
//! the HTTP response make no heap allocation on the loop thread.

mod util;

use std::net::TcpStream;

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
    let mut s = TcpStream::connect(running.http_addr()).unwrap();
    s.set_nodelay(true).unwrap();
    let request = race_request("hello, world");
    let mut buf = [0u8; 4096];
    // Warm: buffers, tables and lists at their working size, and the timer heap too (a
    // call's cancelled timeout stays in it until a sweep at about 1,024 entries).
    for _ in 0..2000 {
        call_race(&mut s, &request, &mut buf);
    }
    let before = GLOBAL.allocations();
    assert!(
        before > 0,
        "no allocation counted while warming: wrong thread name?"
    );
    for _ in 0..1000 {
        call_race(&mut s, &request, &mut buf);
    }
    let during = GLOBAL.allocations() - before;
    assert_eq!(during, 0, "loop allocations during 1,000 race requests");
    running.stop();
}
