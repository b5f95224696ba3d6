//! The peak heap of a prost decode, measured by a counting global allocator: shared by the
//! footprint tests and the `grpc_footprint` fuzz target, which declare [`Counting`] as their
//! `#[global_allocator]`.
//!
//! Counters are per thread, so tests can run in parallel. A reallocation counts its old and new
//! buffers both, as `decoded_bound` does.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::mem::size_of;

use bytes::Bytes;
use prost::Message;

pub struct Counting;

thread_local! {
    static CURRENT: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// Notes `alive` more bytes, of which `transient` are freed right away.
fn note(alive: isize, transient: isize) {
    // `try_with`: allocations can happen while a thread's locals are torn down.
    let _ = CURRENT.try_with(|current| {
        let now = current.get();
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now + alive + transient)));
        current.set(now + alive);
    });
}

// SAFETY: forwards to `System`, only counting sizes on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            note(layout.size() as isize, 0);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            note(layout.size() as isize, 0);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize), 0);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // The old buffer is alive while the new one is filled (unless grown in place).
            note(
                new_size as isize - layout.size() as isize,
                layout.size() as isize,
            );
        }
        new
    }
}

/// The peak heap of decoding `wire` as an `M`, and whether it decoded. The decoded struct counts
/// as the bound counts it: the server keeps it on the heap (tonic moves it into the handler's
/// future).
pub fn peak_of<M: Message + Default>(wire: &[u8]) -> (usize, bool) {
    let buffer = Bytes::from(wire.to_vec());
    let start = CURRENT.with(Cell::get);
    PEAK.with(|peak| peak.set(start));
    let decoded = M::decode(buffer.clone());
    let peak = PEAK.with(Cell::get) - start;
    let decoded_ok = decoded.is_ok();
    drop(decoded);
    (peak as usize + size_of::<M>(), decoded_ok)
}
