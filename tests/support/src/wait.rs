//! Polling until a condition holds.

use std::time::{Duration, Instant};

/// The first pause between two polls; it doubles up to [`MAX_PAUSE`], so that a
/// condition that holds at once is seen at once and a long wait does not spin.
pub const FIRST_PAUSE: Duration = Duration::from_micros(50);

/// The longest pause between two polls.
pub const MAX_PAUSE: Duration = Duration::from_millis(20);

/// Polls `cond` until it holds or `limit` has passed; whether it held. It is polled
/// once more after the deadline, and first at once.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    let mut pause = FIRST_PAUSE;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// [`wait_until`], failing the test (at the caller's line) when `cond` did not hold
/// within `limit`.
///
/// # Panics
/// `cond` did not hold within `limit`: "timed out after {limit} waiting for {what}".
#[track_caller]
pub fn assert_eventually(what: &str, limit: Duration, cond: impl FnMut() -> bool) {
    assert!(
        wait_until(limit, cond),
        "timed out after {limit:?} waiting for {what}"
    );
}
