//! The race's request path allocates nothing in the consumer-agent's loop: once warm,
//! parsing the HTTP request, encoding the agent request, matching the answer and writing
//! the HTTP response make no heap allocation on the loop thread.

mod util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};

use util::*;

/// Counts allocations made on the consumer-agent's loop threads ("consumer-N").
struct LoopThreadsOnly;

static LOOP_ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread is a consumer loop: unknown (0), yes (1), no (2).
    static IS_LOOP: Cell<u8> = const { Cell::new(0) };
}

fn on_loop_thread() -> bool {
    IS_LOOP
        .try_with(|known| {
            if known.get() == 0 {
                let mut name = [0u8; 16];
                // SAFETY: PR_GET_NAME writes at most 16 bytes (NUL included) into `name`.
                let got = unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
                let is_loop = got == 0 && name.starts_with(b"consumer-");
                known.set(if is_loop { 1 } else { 2 });
            }
            known.get() == 1
        })
        .unwrap_or(false)
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for LoopThreadsOnly {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if on_loop_thread() {
            LOOP_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if on_loop_thread() {
            LOOP_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: LoopThreadsOnly = LoopThreadsOnly;

/// Sends the race's request and reads one whole answer (Content-Length framed).
fn call(s: &mut TcpStream, request: &[u8], buf: &mut [u8]) -> usize {
    s.write_all(request).unwrap();
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..]).unwrap();
        assert!(n > 0, "consumer-agent closed the connection");
        have += n;
        let text = &buf[..have];
        if let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&text[..end]).unwrap();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .expect("a Content-Length")
                .parse()
                .unwrap();
            if have >= end + 4 + len {
                return len;
            }
        }
    }
}

#[test]
fn race_requests_on_a_warm_connection_allocate_nothing_on_the_loop() {
    let agent = fake_agent(Mode::Hash);
    let running = consumer(&[agent.addr], &["--loops", "1"]);
    wait_ready(&running);
    let mut s = TcpStream::connect(running.http_addr).unwrap();
    s.set_nodelay(true).unwrap();
    let request = race_request("hello, world");
    let mut buf = [0u8; 4096];
    // Warm: buffers, tables and lists at their working size, and the timer heap too (a
    // call's cancelled timeout stays in it until a sweep at about 1,024 entries).
    for _ in 0..2000 {
        call(&mut s, &request, &mut buf);
    }
    let before = LOOP_ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..1000 {
        call(&mut s, &request, &mut buf);
    }
    let during = LOOP_ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(during, 0, "loop allocations during 1,000 race requests");
    running.stop();
}
