//! A counting global allocator for the no-allocation tests: it forwards to the system
//! allocator and counts allocations (and reallocations) on the threads it selects.
//!
//! Install one as the test binary's `#[global_allocator]`, choosing whose allocations
//! [`Counting::allocations`] counts, then compare counts before and after the work:
//!
//! ```no_run
//! use test_support::alloc::Counting;
//!
//! // An agent's loop threads, not the test's own:
//! #[global_allocator]
//! static GLOBAL: Counting = Counting::threads_named("consumer-");
//!
//! let before = GLOBAL.allocations();
//! // ... the work that must not allocate ...
//! assert_eq!(GLOBAL.allocations() - before, 0);
//! ```
//!
//! Whatever it selects, it also counts each thread's own allocations, for
//! [`allocations_during`] (work done on the calling thread, tests running side by side).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The threads whose allocations [`Counting::allocations`] counts.
#[derive(Debug, Clone, Copy)]
enum Threads {
    /// None: only the per-thread counts of [`allocations_during`].
    None,
    /// Every thread of the process.
    All,
    /// Those whose name starts with this.
    Named(&'static str),
}

/// A global allocator that forwards to [`System`] and counts allocations and
/// reallocations (frees are not counted). Meant to be the `#[global_allocator]`: the
/// counts of one that is not are meaningless.
#[derive(Debug)]
pub struct Counting {
    threads: Threads,
    allocations: AtomicUsize,
}

impl Counting {
    /// Counts the allocations of the threads whose name starts with `prefix` (an
    /// agent's loop threads). On Linux only the first 15 bytes of a name are kept, so at
    /// most 15 bytes of `prefix` are compared. A thread's name is read at its first
    /// allocation: name threads when spawning them (`std::thread::Builder::name`).
    pub const fn threads_named(prefix: &'static str) -> Counting {
        Counting::new(Threads::Named(prefix))
    }

    /// Counts the allocations of every thread in the process (the test's own included).
    pub const fn every_thread() -> Counting {
        Counting::new(Threads::All)
    }

    /// Counts only per thread, for [`allocations_during`]; [`Counting::allocations`]
    /// stays 0.
    pub const fn per_thread() -> Counting {
        Counting::new(Threads::None)
    }

    const fn new(threads: Threads) -> Counting {
        Counting {
            threads,
            allocations: AtomicUsize::new(0),
        }
    }

    /// Allocations counted so far on the selected threads.
    pub fn allocations(&self) -> usize {
        self.allocations.load(Ordering::Relaxed)
    }

    fn count(&self) {
        let _ = THIS_THREAD.try_with(|n| n.set(n.get() + 1));
        if self.selects_this_thread() {
            self.allocations.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn selects_this_thread(&self) -> bool {
        let prefix = match self.threads {
            Threads::None => return false,
            Threads::All => return true,
            Threads::Named(prefix) => prefix.as_bytes(),
        };
        SELECTED
            .try_with(|known| {
                if known.get() == UNKNOWN {
                    let mut name = [0u8; NAME_BUF];
                    let want = &prefix[..prefix.len().min(NAME_MAX)];
                    known.set(if thread_name(&mut name) && name.starts_with(want) {
                        YES
                    } else {
                        NO
                    });
                }
                known.get() == YES
            })
            .unwrap_or(false)
    }
}

/// Allocations (and reallocations) made on the calling thread while `f` runs, and what
/// `f` returned. Needs a [`Counting`] as the global allocator (any selection); without
/// one it is always 0.
pub fn allocations_during<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let count = || THIS_THREAD.try_with(Cell::get).unwrap_or(0);
    let before = count();
    let r = f();
    (count() - before, r)
}

const UNKNOWN: u8 = 0;
const YES: u8 = 1;
const NO: u8 = 2;

thread_local! {
    /// Allocations made on this thread so far.
    static THIS_THREAD: Cell<usize> = const { Cell::new(0) };
    /// Whether this thread is selected by name: [`UNKNOWN`] until its first allocation,
    /// then [`YES`] or [`NO`].
    static SELECTED: Cell<u8> = const { Cell::new(UNKNOWN) };
}

/// The longest thread name the system keeps, in bytes (without the NUL).
#[cfg(target_os = "linux")]
const NAME_MAX: usize = 15;
#[cfg(not(target_os = "linux"))]
const NAME_MAX: usize = 63;

const NAME_BUF: usize = NAME_MAX + 1;

/// The calling thread's name into `name`, NUL-terminated, without allocating; false if
/// it cannot be read.
#[cfg(target_os = "linux")]
fn thread_name(name: &mut [u8; NAME_BUF]) -> bool {
    // SAFETY: PR_GET_NAME writes at most 16 bytes (NUL included) into `name`.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) == 0 }
}

/// The calling thread's name into `name`, NUL-terminated, without allocating; false if
/// it cannot be read.
#[cfg(not(target_os = "linux"))]
fn thread_name(name: &mut [u8; NAME_BUF]) -> bool {
    // SAFETY: pthread_getname_np writes at most `name.len()` bytes (NUL included) into
    // `name`, for the calling thread, which is alive.
    unsafe {
        libc::pthread_getname_np(libc::pthread_self(), name.as_mut_ptr().cast(), name.len()) == 0
    }
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.count();
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.count();
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
