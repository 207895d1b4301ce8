//! A counting global allocator for tests: counts the allocations made on threads whose
//! name starts with a given prefix (an agent's loop threads), not the test's own.
//!
//! Include with `#[path = "../../tests/support/loop_allocs.rs"] mod loop_allocs;` and
//! install `loop_allocs::Counting` as the `#[global_allocator]`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Counts allocations (and reallocations) on the threads named by [`count_threads`].
pub struct Counting;

static PREFIX: OnceLock<&'static [u8]> = OnceLock::new();
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread is counted: unknown (0), yes (1), no (2).
    static COUNTED: Cell<u8> = const { Cell::new(0) };
}

/// Count the threads whose name starts with `prefix` (at most 15 bytes are compared:
/// Linux keeps 15). Call once, before the threads start.
pub fn count_threads(prefix: &'static str) {
    let _ = PREFIX.set(prefix.as_bytes());
}

/// Allocations counted so far.
pub fn allocations() -> usize {
    ALLOCATIONS.load(Ordering::Relaxed)
}

fn counted() -> bool {
    let Some(prefix) = PREFIX.get() else {
        return false;
    };
    COUNTED
        .try_with(|known| {
            if known.get() == 0 {
                let mut name = [0u8; 16];
                // SAFETY: PR_GET_NAME writes at most 16 bytes (NUL included) into `name`.
                let got = unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
                let want = &prefix[..prefix.len().min(15)];
                known.set(if got == 0 && name.starts_with(want) {
                    1
                } else {
                    2
                });
            }
            known.get() == 1
        })
        .unwrap_or(false)
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counted() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
