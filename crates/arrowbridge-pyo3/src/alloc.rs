//! A global allocator that aligns arrays to 64 bytes, as Arrow and XLA want them.

use std::alloc::{GlobalAlloc, Layout};

/// Wraps a global allocator so that every allocation of 64 bytes or more is aligned to 64
/// bytes: Arrow's own alignment, and what XLA needs to adopt an array through DLPack
/// (`jax.dlpack.from_dlpack`) instead of copying it. Smaller allocations are left as they
/// are: they hold no array worth adopting.
///
/// An extension whose results go to JAX declares it once:
///
/// ```
/// #[global_allocator]
/// static ALLOCATOR: arrowbridge_pyo3::Aligned64<std::alloc::System> =
///     arrowbridge_pyo3::Aligned64(std::alloc::System);
/// # fn main() {
/// let v = vec![0.0f64; 100];
/// assert_eq!(v.as_ptr() as usize % 64, 0);
/// # }
/// ```
pub struct Aligned64<A>(pub A);

const ALIGN: usize = 64;

fn widened(layout: Layout, size: usize) -> Layout {
    if size >= ALIGN && layout.align() < ALIGN {
        // SAFETY: 64 is a power of two, and `size` rounded up to it does not overflow isize
        // (the caller's layout had at most that size, or the allocator refuses it).
        unsafe { Layout::from_size_align_unchecked(size, ALIGN) }
    } else {
        layout
    }
}

// SAFETY: every call forwards to the inner allocator with a layout of the same size and at
// least the requested alignment. Blocks are freed with the layout they were allocated with
// (`widened` of the same size gives the same layout), as `GlobalAlloc` requires.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Aligned64<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe { self.0.alloc(widened(layout, layout.size())) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe { self.0.alloc_zeroed(widened(layout, layout.size())) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: see the impl.
        unsafe { self.0.dealloc(ptr, widened(layout, layout.size())) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = widened(layout, layout.size());
        let new = widened(layout, new_size);
        if old.align() == new.align() {
            // SAFETY: see the impl; the block keeps its alignment.
            return unsafe { self.0.realloc(ptr, old, new_size) };
        }
        // Crossing 64 bytes changes the alignment: move the block.
        // SAFETY: `new` has a non-zero size (`realloc` is never asked for 0 bytes); the
        // smaller of the two sizes is initialised in the old block and fits the new one; the
        // old block is freed with the layout it was allocated with.
        unsafe {
            let moved = self.0.alloc(new);
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                self.0.dealloc(ptr, old);
            }
            moved
        }
    }
}
