//! Polling until a condition holds.

use std::time::{Duration, Instant};

use test_support::wait::{assert_eventually, wait_until};

#[test]
fn wait_until_says_whether_it_held() {
    let start = Instant::now();
    let mut polls = 0;
    assert!(wait_until(Duration::from_secs(5), || {
        polls += 1;
        polls == 10
    }));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "polled quickly at first"
    );
    let start = Instant::now();
    assert!(!wait_until(Duration::from_millis(100), || false));
    assert!(start.elapsed() >= Duration::from_millis(100));
}

#[test]
#[should_panic(expected = "waiting for the impossible")]
fn assert_eventually_fails_the_test() {
    assert_eventually("the impossible", Duration::from_millis(50), || false);
}
