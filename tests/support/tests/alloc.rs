//! The counting allocator counts the threads it selects, and each thread on its own.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use test_support::alloc::{allocations_during, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting::threads_named("counted-");

fn allocate() {
    black_box(Box::new(black_box(7u64)));
}

#[test]
fn named_threads_are_counted_and_others_not() {
    let before = GLOBAL.allocations();
    allocate();
    std::thread::Builder::new()
        .name("other".into())
        .spawn(allocate)
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(GLOBAL.allocations(), before, "the test's and `other`'s");
    std::thread::Builder::new()
        .name("counted-1".into())
        .spawn(|| {
            let before = GLOBAL.allocations();
            allocate();
            assert!(GLOBAL.allocations() > before, "a `counted-` thread's");
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn allocations_during_counts_the_calling_thread() {
    let (n, ()) = allocations_during(|| {
        for _ in 0..3 {
            allocate();
        }
    });
    assert_eq!(n, 3);
    // Another thread allocating all along is not counted for this one.
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                allocate();
                n += 1;
            }
            n
        })
    };
    let (n, ()) = allocations_during(|| {
        let end = Instant::now() + Duration::from_millis(50);
        while Instant::now() < end {
            std::hint::spin_loop();
        }
    });
    stop.store(true, Ordering::Relaxed);
    assert!(other.join().unwrap() > 0, "the other thread allocated");
    assert_eq!(n, 0, "another thread's allocations are not the caller's");
}
