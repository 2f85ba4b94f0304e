//! A global allocator that keeps freed large blocks for a moment, so that the next block of
//! the same size lands in memory already touched.
//!
//! The pool is Linux's (anonymous mappings with `MADV_HUGEPAGE`, a reaper thread, a fork
//! handler); elsewhere [`Recycling`] hands every call to the inner allocator. Building with
//! `RUSTFLAGS="--cfg arrowbridge_portable"` selects that fallback on Linux too, so that it is
//! compiled and tested here.

use std::alloc::Layout;

#[cfg(all(target_os = "linux", not(arrowbridge_portable)))]
mod pool;

/// Wraps a global allocator so that blocks of 32 MiB or more are anonymous mappings (2 MiB
/// aligned, asking for transparent huge pages) that are kept for a second after they are
/// freed: a new block of the same size in that second reuses one, already faulted in.
/// Smaller blocks go to the inner allocator.
///
/// A process that receives arrays of one size again and again (a Flight server that is sent
/// a 1 GiB array every few hundred milliseconds, a client that gets one) otherwise pays for
/// fresh pages on every receipt: a page fault per page, zeroed by the kernel, and on a
/// virtual machine whose host takes back freed memory, a fault in the host too. That cost
/// can exceed the copy that fills the block. jemalloc (Arrow C++'s allocator) keeps freed
/// pages for a second for the same reason; mimalloc does too, but not reliably for blocks
/// of a gigabyte.
///
/// On other systems than Linux it is the inner allocator, unchanged.
///
/// A large block that grows (`realloc`, as a buffer that doubles while rows arrive does)
/// takes a kept block of its new size when there is one, and otherwise keeps its pages,
/// which the kernel moves to a larger range (`mremap`): its bytes are never copied into
/// fresh pages, and one that shrinks stays where it is.
///
/// What is kept is bounded: at most 8 blocks and an eighth of the machine's RAM, and a
/// thread (`arrowbridge-recycle`) returns each block to the kernel one second after it was
/// freed, so an idle process holds nothing extra. The same thread unmaps the blocks the pool
/// has no room for: the thread that frees a large block never waits for its unmapping
/// (about 100 ms a GiB of touched pages), so a cancelled 1 GiB get returns at once.
///
/// ```
/// #[global_allocator]
/// static ALLOCATOR: arrowbridge_pyo3::Recycling<std::alloc::System> =
///     arrowbridge_pyo3::Recycling(std::alloc::System);
/// # fn main() {
/// let first = vec![1u8; 64 << 20];
/// let address = first.as_ptr();
/// drop(first);
/// let second = vec![2u8; 64 << 20];
/// # #[cfg(target_os = "linux")]
/// assert_eq!(second.as_ptr(), address); // the same pages, already faulted in
/// # }
/// ```
pub struct Recycling<A>(pub A);

/// Blocks of at least this many bytes are mapped and recycled.
#[cfg(all(target_os = "linux", not(arrowbridge_portable)))]
const LARGE: usize = 32 << 20;

#[cfg(all(target_os = "linux", not(arrowbridge_portable)))]
fn is_large(layout: Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= pool::HUGE_PAGE
}

// SAFETY: every call goes to the inner allocator unchanged.
#[cfg(not(all(target_os = "linux", not(arrowbridge_portable))))]
unsafe impl<A: std::alloc::GlobalAlloc> std::alloc::GlobalAlloc for Recycling<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe { self.0.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: see the impl.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::Recycling;
    use std::alloc::{GlobalAlloc, Layout, System};

    /// Large and small blocks alike, through whichever implementation this build has.
    #[test]
    fn blocks_of_every_size_are_usable_and_zeroed_when_asked() {
        let recycling = Recycling(System);
        for size in [64, 1 << 20, 40 << 20] {
            let layout = Layout::from_size_align(size, 64).unwrap();
            // SAFETY: a non-zero layout; the block is written within its size and freed with
            // the layout it was allocated with.
            unsafe {
                let block = recycling.alloc_zeroed(layout);
                assert!(!block.is_null());
                assert_eq!(*block.add(size - 1), 0);
                block.write_bytes(7, size);
                let grown = recycling.realloc(block, layout, size * 2);
                assert!(!grown.is_null());
                assert_eq!(*grown.add(size - 1), 7);
                recycling.dealloc(grown, Layout::from_size_align(size * 2, 64).unwrap());
            }
        }
    }
}
