//! With `--access-log`, the race's request path still allocates nothing in the
//! consumer-agent's loop once warm: each call's line is formatted into a buffer the
//! log's writer thread handed back, and the per-method counters are found without
//! allocating (see `no_alloc.rs` for the path without the log).

mod util;

use std::net::TcpStream;

use test_support::alloc::Counting;
use util::*;

/// Counts the consumer-agent's threads (its loops are `consumer-N`), not the test's.
#[global_allocator]
static GLOBAL: Counting = Counting::threads_named("consumer-");

#[test]
fn race_requests_with_the_access_log_on_allocate_nothing_on_the_loop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let agent = fake_agent(Mode::Hash);
    let running = consumer(
        &[agent.addr],
        &["--loops", "1", "--access-log", path.to_str().unwrap()],
    );
    wait_ready(&running);
    let mut s = TcpStream::connect(running.http_addr()).unwrap();
    s.set_nodelay(true).unwrap();
    let request = race_request("hello, world");
    let mut buf = [0u8; 4096];
    // Warm, as in `no_alloc.rs`; the log's buffers reach the number in circulation.
    for _ in 0..3000 {
        call_race(&mut s, &request, &mut buf);
    }
    assert!(
        GLOBAL.allocations() > 0,
        "no allocation counted while warming"
    );
    // Three windows of 300 calls: the loop's once-a-second housekeeping (its view of
    // the upstreams for /metrics) allocates a few times when it runs, which may fall in
    // one window; calls themselves allocate in none.
    let mut windows = Vec::new();
    for _ in 0..3 {
        let before = GLOBAL.allocations();
        for _ in 0..300 {
            call_race(&mut s, &request, &mut buf);
        }
        windows.push(GLOBAL.allocations() - before);
    }
    assert!(
        windows.contains(&0) && windows.iter().all(|&n| n < 30),
        "loop allocations in three windows of 300 logged race requests: {windows:?}"
    );
    assert_eq!(running.metrics().access_log_dropped(), 0);
    running.stop();
    // The writer has written everything once the agent is stopped and its log closed:
    // wait for the lines rather than assume it.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut lines = 0;
    while lines < 3900 && std::time::Instant::now() < end {
        lines = std::fs::read_to_string(&path).unwrap().lines().count();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(lines, 3900, "one line per call");
}
