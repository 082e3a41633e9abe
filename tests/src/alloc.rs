//! A counting global allocator, for a binary that must say how much heap a step holds: the
//! system allocator, with the bytes allocated now and their peak counted process-wide and per
//! thread. A binary opts in with
//! `#[global_allocator] static A: medchain_tests::alloc::Counting = medchain_tests::alloc::Counting;`
//! (the decode-memory test; the benchmark, for an explanation's extra memory).
//!
//! Per thread, a block freed on another thread than the one that allocated it is counted there;
//! the steps measured that way allocate and free on their own thread.

#![allow(unsafe_code)] // a global allocator is unsafe by definition

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // Const-initialised and without destructors: usable from inside the allocator.
    static THREAD_NOW: Cell<isize> = const { Cell::new(0) };
    static THREAD_PEAK: Cell<isize> = const { Cell::new(0) };
}

fn grew(by: usize) {
    let now = NOW.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
    let _ = THREAD_NOW.try_with(|t| {
        let n = t.get() + by as isize;
        t.set(n);
        let _ = THREAD_PEAK.try_with(|p| p.set(p.get().max(n)));
    });
}

fn shrank(by: usize) {
    NOW.fetch_sub(by, Ordering::Relaxed);
    let _ = THREAD_NOW.try_with(|t| t.set(t.get() - by as isize));
}

// SAFETY: every call goes to the system allocator unchanged; only sizes are counted, in
// atomics and thread-locals that need no allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Both blocks may exist for a moment: counted before the old one goes.
            grew(new_size);
            shrank(layout.size());
        }
        p
    }
}

/// `f`'s result and the most heap the whole process held at once while it ran, beyond what it
/// held before (nothing else may allocate meanwhile for the figure to be `f`'s). Zero unless
/// [`Counting`] is the global allocator.
pub fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = NOW.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(before))
}

/// `f`'s result and the most heap this thread held at once while it ran, beyond what it held
/// before, whatever other threads do.
pub fn thread_peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = THREAD_NOW.with(Cell::get);
    THREAD_PEAK.with(|p| p.set(before));
    let out = f();
    let peak = THREAD_PEAK.with(Cell::get);
    (out, (peak - before).max(0) as usize)
}
