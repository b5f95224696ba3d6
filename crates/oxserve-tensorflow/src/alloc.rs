//! A global allocator that gives large blocks TensorFlow's alignment.
//!
//! `TF_NewTensor` uses a buffer in place only when it is aligned to `EIGEN_MAX_ALIGN_BYTES` (64
//! in the wheel); otherwise it copies it into a buffer of its own. glibc's `malloc` aligns to 16
//! bytes, and large blocks, mapped on their own, start 16 bytes into a page: every image or batch
//! handed to TensorFlow was copied once more, into fresh pages that were then faulted in.
//! Blocks of at least [`LARGE`] bytes are therefore allocated 64-byte aligned (batches of 32
//! Planet images from tf.Examples, 6 MB each, went through `oxserve predict` 6% faster). Smaller
//! blocks are left as the system makes them: none is a tensor worth the copy, and aligned
//! allocation costs more.

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks from this size on are aligned to [`ALIGN`]: an image's worth of floats is far above,
/// the bookkeeping a server allocates by the million far below.
pub const LARGE: usize = 16 * 1024;

/// `EIGEN_MAX_ALIGN_BYTES` of the `tensorflow-cpu` wheel (`TF_TensorDefaultAlignment`; a test
/// checks it).
pub const ALIGN: usize = 64;

/// The system allocator, with large blocks aligned for TensorFlow. Install it in a binary with
/// `#[global_allocator] static ALLOC: TensorAligned = TensorAligned;`.
pub struct TensorAligned;

/// The layout a block of `layout` is allocated with: the same size, aligned to at least
/// [`ALIGN`] when large. A function of the caller's layout alone, so that `dealloc` and
/// `realloc`, given the same layout, find the same block.
fn actual(layout: Layout) -> Layout {
    if layout.size() >= LARGE && layout.align() < ALIGN {
        // A size too close to isize::MAX for ALIGN keeps its layout: no such block fits anyway.
        Layout::from_size_align(layout.size(), ALIGN).unwrap_or(layout)
    } else {
        layout
    }
}

// SAFETY: every method hands `System` the layout `actual` derives from the caller's, the same for
// a block's allocation, reallocation and release, so `System`'s contract holds for each block;
// the blocks returned satisfy the caller's layout (same size, alignment at least as large).
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for TensorAligned {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: `actual` keeps the size (non-zero, as the caller guarantees).
        unsafe { System.alloc(actual(layout)) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(actual(layout)) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator with `layout`, so by `System` with
        // `actual(layout)`.
        unsafe { System.dealloc(ptr, actual(layout)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = actual(layout);
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        let new = actual(new_layout);
        if old.align() == new.align() {
            // SAFETY: `ptr` was allocated by `System` with `old`; `new_size` is non-zero.
            return unsafe { System.realloc(ptr, old, new_size) };
        }
        // Crossing LARGE changes the alignment, which `System.realloc` keeps: move the block.
        // SAFETY: `new` has a non-zero size.
        let moved = unsafe { System.alloc(new) };
        if !moved.is_null() {
            // SAFETY: both blocks are valid for the smaller of the two sizes and do not overlap;
            // `ptr` was allocated by `System` with `old`.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                System.dealloc(ptr, old);
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blocks_are_aligned_small_ones_keep_their_layout() {
        let small = Layout::from_size_align(100, 4).unwrap();
        assert_eq!(actual(small), small);
        let large = Layout::from_size_align(LARGE, 4).unwrap();
        assert_eq!(actual(large).align(), ALIGN);
        assert_eq!(actual(large).size(), LARGE);
        let aligned_more = Layout::from_size_align(LARGE, 4096).unwrap();
        assert_eq!(actual(aligned_more), aligned_more);
    }

    #[test]
    #[allow(unsafe_code)]
    fn blocks_keep_their_contents_and_alignment_across_reallocation() {
        let a = TensorAligned;
        let layout = Layout::from_size_align(64, 4).unwrap();
        // SAFETY: a non-zero layout; every pointer is used within the size it was given and
        // released with the layout it has at that point.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            for i in 0..64 {
                *p.add(i) = i as u8;
            }
            // Small to large: moved, aligned, contents kept.
            let p = a.realloc(p, layout, 4 * LARGE);
            assert!(!p.is_null());
            assert_eq!(p.align_offset(ALIGN), 0);
            assert!((0..64).all(|i| *p.add(i) == i as u8));
            *p.add(4 * LARGE - 1) = 7;
            // Large to larger: still aligned.
            let large = Layout::from_size_align(4 * LARGE, 4).unwrap();
            let p = a.realloc(p, large, 64 * LARGE);
            assert_eq!(p.align_offset(ALIGN), 0);
            assert_eq!(*p.add(4 * LARGE - 1), 7);
            // Large to small: moved back, contents kept.
            let larger = Layout::from_size_align(64 * LARGE, 4).unwrap();
            let p = a.realloc(p, larger, 32);
            assert!((0..32).all(|i| *p.add(i) == i as u8));
            a.dealloc(p, Layout::from_size_align(32, 4).unwrap());
        }
    }
}
