//! The request path allocates nothing: once a connection is warm, echoing messages
//! through a loop (read into the shared buffer, write, flush) makes no heap allocation.

mod util;

use std::io::{Read, Write};

use reactor::Config;
use test_support::alloc::Counting;
use util::*;

/// Counts every allocation in the process (the loop thread's included).
#[global_allocator]
static GLOBAL: Counting = Counting::every_thread();

#[test]
fn echoing_on_a_warm_connection_allocates_nothing() {
    let (echo, _) = start_echo(Config::default());
    let mut c = client(echo.addr());
    let msg = [0x5a; 64];
    for _ in 0..100 {
        ping(&mut c, &msg); // warm: buffers and lists reach their working size
    }
    let mut back = [0; 64];
    let before = GLOBAL.allocations();
    for _ in 0..1000 {
        c.write_all(&msg).unwrap();
        c.read_exact(&mut back).unwrap();
    }
    let during = GLOBAL.allocations() - before;
    assert_eq!(during, 0, "allocations during 1,000 echoed messages");
    echo.shutdown();
}
