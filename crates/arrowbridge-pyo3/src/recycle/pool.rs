//! The pool of [`Recycling`] on Linux: anonymous mappings of huge pages, a thread that
//! returns them to the kernel, and a fork handler that keeps the pool's lock consistent in a
//! forked child.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::RefCell;
use std::sync::{Condvar, Mutex, MutexGuard, Once, PoisonError};
use std::time::{Duration, Instant};

use super::{is_large, Recycling};

/// Mappings are whole huge pages, aligned to one.
pub(super) const HUGE_PAGE: usize = 2 << 20;
/// How long a freed block is kept.
const KEEP: Duration = Duration::from_secs(1);
/// Blocks kept at most.
const SLOTS: usize = 8;

/// Bytes mapped for a block of `size` bytes.
fn mapped(size: usize) -> usize {
    size.next_multiple_of(HUGE_PAGE)
}

/// A freed block, kept for reuse.
#[derive(Clone, Copy)]
struct Kept {
    start: usize,
    len: usize,
    since: Instant,
}

struct Pool {
    kept: [Option<Kept>; SLOTS],
    bytes: usize,
    /// Blocks to return to the kernel at once, by the reaper: unmapping a large block whose
    /// pages were touched takes long (about 100 ms a GiB), which the thread that freed it
    /// (a call that was just cancelled, say) should not wait for.
    doomed: [Option<Kept>; SLOTS],
    /// The process whose thread returns expired blocks (a forked child needs its own).
    reaper: Option<libc::pid_t>,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    kept: [None; SLOTS],
    bytes: 0,
    doomed: [None; SLOTS],
    reaper: None,
});
static FREED: Condvar = Condvar::new();

fn pool() -> MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(PoisonError::into_inner)
}

thread_local! {
    /// The pool's lock, held by the thread that forks from just before the fork to just
    /// after it, so that the child never inherits it held by a thread it does not have.
    static HELD_FOR_FORK: RefCell<Option<MutexGuard<'static, Pool>>> = const { RefCell::new(None) };
}

extern "C" fn before_fork() {
    let guard = pool();
    HELD_FOR_FORK.with(|held| *held.borrow_mut() = Some(guard));
}

/// Runs in the parent and in the child: the forking thread, which holds the lock, lets go.
extern "C" fn after_fork() {
    HELD_FOR_FORK.with(|held| drop(held.borrow_mut().take()));
}

/// Registers the fork handlers, once, before the pool's lock is first taken.
fn install_fork_handlers() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        // SAFETY: the handlers are plain functions that live as long as the process; they
        // take and release a lock no fork-time code of this crate holds.
        unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork)) };
    });
}

/// At most this many bytes are kept: an eighth of the machine's RAM.
fn budget() -> usize {
    // SAFETY: sysconf reads a value; it allocates nothing.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page <= 0 {
        return 0;
    }
    (pages as usize).saturating_mul(page as usize) / 8
}

impl Pool {
    /// A kept block of exactly `len` mapped bytes.
    fn take(&mut self, len: usize) -> Option<usize> {
        let slot = self
            .kept
            .iter_mut()
            .filter(|k| k.is_some_and(|k| k.len == len))
            .max_by_key(|k| k.map(|k| k.since))?; // the most recently touched
        let kept = slot.take()?;
        self.bytes -= kept.len;
        Some(kept.start)
    }

    /// The kept block freed longest ago.
    fn oldest(&mut self) -> Option<&mut Option<Kept>> {
        self.kept
            .iter_mut()
            .filter(|k| k.is_some())
            .min_by_key(|k| k.map(|k| k.since))
    }

    /// Keeps a block, making room by handing back the oldest ones in `evicted`.
    fn keep(&mut self, block: Kept, evicted: &mut Vec<Kept>) -> bool {
        if block.len > budget() {
            return false;
        }
        while self.bytes + block.len > budget() || self.kept.iter().all(Option::is_some) {
            let Some(old) = self.oldest().and_then(Option::take) else {
                return false;
            };
            self.bytes -= old.len;
            evicted.push(old);
        }
        let slot = self.kept.iter_mut().find(|k| k.is_none());
        let Some(slot) = slot else { return false };
        *slot = Some(block);
        self.bytes += block.len;
        true
    }

    /// Hands `block` to the reaper to unmap; `false` when it has no room for more (the caller
    /// unmaps it).
    fn doom(&mut self, block: Kept) -> bool {
        match self.doomed.iter_mut().find(|d| d.is_none()) {
            Some(slot) => {
                *slot = Some(block);
                true
            }
            None => false,
        }
    }

    /// Removes the blocks kept for [`KEEP`], and the doomed ones, into `expired`; the time
    /// until the next kept one expires.
    fn expire(&mut self, now: Instant, expired: &mut Vec<Kept>) -> Option<Duration> {
        expired.extend(self.doomed.iter_mut().filter_map(Option::take));
        let mut next = None::<Duration>;
        for slot in &mut self.kept {
            let Some(kept) = *slot else { continue };
            let age = now.saturating_duration_since(kept.since);
            if age >= KEEP {
                *slot = None;
                self.bytes -= kept.len;
                expired.push(kept);
            } else {
                let left = KEEP - age;
                next = Some(next.map_or(left, |n| n.min(left)));
            }
        }
        next
    }
}

/// A new mapping of `len` bytes (a multiple of [`HUGE_PAGE`]), aligned to a huge page.
fn map(len: usize) -> *mut u8 {
    let Some(padded) = len.checked_add(HUGE_PAGE) else {
        return std::ptr::null_mut();
    };
    // SAFETY: a new private anonymous mapping; the result is checked.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            padded,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    let raw = raw as usize;
    let start = raw.next_multiple_of(HUGE_PAGE);
    // SAFETY: both ranges lie inside the mapping just made, outside [start, start + len).
    unsafe {
        if start > raw {
            libc::munmap(raw as *mut libc::c_void, start - raw);
        }
        let tail = raw + padded - (start + len);
        if tail > 0 {
            libc::munmap((start + len) as *mut libc::c_void, tail);
        }
        // Only a hint: a kernel without transparent huge pages ignores it.
        libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    start as *mut u8
}

fn unmap(blocks: &[Kept]) {
    for block in blocks {
        // SAFETY: each block is a whole mapping made by `map`, no longer referenced.
        unsafe { libc::munmap(block.start as *mut libc::c_void, block.len) };
    }
}

/// Returns each kept block to the kernel [`KEEP`] after it was freed.
fn reap() {
    let mut expired = Vec::with_capacity(SLOTS);
    let mut guard = pool();
    loop {
        let next = guard.expire(Instant::now(), &mut expired);
        if !expired.is_empty() {
            drop(guard);
            unmap(&expired);
            expired.clear();
            guard = pool();
            continue;
        }
        guard = match next {
            Some(wait) => {
                let waited = FREED.wait_timeout(guard, wait);
                waited.unwrap_or_else(PoisonError::into_inner).0
            }
            None => FREED.wait(guard).unwrap_or_else(PoisonError::into_inner),
        };
    }
}

impl<A> Recycling<A> {
    /// A block of `len` mapped bytes, and whether it was kept (not a new mapping).
    fn alloc_large(&self, len: usize) -> (*mut u8, bool) {
        install_fork_handlers();
        match pool().take(len) {
            Some(start) => (start as *mut u8, true),
            None => (map(len), false),
        }
    }

    /// Keeps, or unmaps, the block at `ptr`.
    ///
    /// # Safety
    /// `ptr` is a block of `len` mapped bytes from [`Recycling::alloc_large`], referenced by
    /// nothing else from now on.
    unsafe fn free_large(&self, ptr: *mut u8, len: usize) {
        let block = Kept {
            start: ptr as usize,
            len,
            since: Instant::now(),
        };
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let mut evicted = Vec::new();
        let mut now = Vec::new();
        let start_reaper = {
            let mut pool = pool();
            if !pool.keep(block, &mut evicted) {
                evicted.push(block);
            }
            // The reaper (started below if this process has none yet) unmaps what the pool
            // lets go of; only what it has no room for is unmapped here.
            for block in evicted {
                if !pool.doom(block) {
                    now.push(block);
                }
            }
            let start_reaper = pool.reaper != Some(pid);
            if start_reaper {
                pool.reaper = Some(pid);
            }
            start_reaper
        };
        unmap(&now);
        FREED.notify_one(); // the reaper may be waiting with nothing to expire or unmap
        if start_reaper {
            let spawned = std::thread::Builder::new()
                .name("arrowbridge-recycle".into())
                .spawn(reap);
            if spawned.is_err() {
                pool().reaper = None; // tried again at the next free
            }
        }
    }
}

// SAFETY: small blocks are the inner allocator's, with the caller's layouts. A large block is
// a mapping of `mapped(size)` bytes aligned to 2 MiB (at least the alignment asked for, which
// `is_large` bounds); its layout's size gives its mapping back when it is freed, and a kept
// block is handed out again only for a layout of the same mapped size. Kept blocks are
// referenced by nothing else.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Recycling<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !is_large(layout) {
            // SAFETY: see the impl.
            return unsafe { self.0.alloc(layout) };
        }
        self.alloc_large(mapped(layout.size())).0
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !is_large(layout) {
            // SAFETY: see the impl.
            return unsafe { self.0.alloc_zeroed(layout) };
        }
        // A kept block is zeroed before it is handed out; a new mapping reads as zeros.
        let (ptr, reused) = self.alloc_large(mapped(layout.size()));
        if reused {
            // SAFETY: a kept block of at least `layout.size()` bytes, now the caller's.
            unsafe { std::ptr::write_bytes(ptr, 0, layout.size()) };
        }
        ptr
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !is_large(layout) {
            // SAFETY: see the impl.
            return unsafe { self.0.dealloc(ptr, layout) };
        }
        // SAFETY: see the impl.
        unsafe { self.free_large(ptr, mapped(layout.size())) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's layout with a new non-zero size that does not overflow isize
        // once aligned, as `realloc` requires of its caller.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (is_large(layout), is_large(new)) {
            // SAFETY: see the impl.
            (false, false) => unsafe { self.0.realloc(ptr, layout, new_size) },
            (true, true) if mapped(layout.size()) == mapped(new_size) => ptr,
            // A block that grows: into a kept block of the new size if there is one (a copy
            // into pages already faulted in costs less than faulting in fresh ones, on a
            // virtual machine several times less), else its pages move. One that shrinks
            // stays where it is.
            (true, true) => {
                // The pool's lock is let go before the old block is freed (which takes it).
                let kept = if new_size > layout.size() {
                    pool().take(mapped(new_size))
                } else {
                    None // shrinking in place copies nothing
                };
                if let Some(start) = kept {
                    // SAFETY: a kept block of the new size, now the caller's; the old block
                    // is valid for the smaller size and freed with its own.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            ptr,
                            start as *mut u8,
                            layout.size().min(new_size),
                        );
                        self.free_large(ptr, mapped(layout.size()));
                    }
                    return start as *mut u8;
                }
                // SAFETY: `ptr` is a block of `mapped(layout.size())` bytes (see the impl).
                match unsafe { remap(ptr, mapped(layout.size()), mapped(new_size)) } {
                    Some(moved) => moved,
                    // SAFETY: as below.
                    None => unsafe { self.copied(ptr, layout, new) },
                }
            }
            // SAFETY: see the impl.
            _ => unsafe { self.copied(ptr, layout, new) },
        }
    }
}

impl<A: GlobalAlloc> Recycling<A> {
    /// `realloc` by a new block and a copy.
    ///
    /// # Safety
    /// `ptr` is a block of `layout` from this allocator; `new` has its alignment and a
    /// non-zero size.
    unsafe fn copied(&self, ptr: *mut u8, layout: Layout, new: Layout) -> *mut u8 {
        // SAFETY: a block of `layout` is valid for the smaller of the two sizes; the new
        // block fits them, and the old one is freed with its layout.
        unsafe {
            let moved = self.alloc(new);
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new.size()));
                self.dealloc(ptr, layout);
            }
            moved
        }
    }
}

/// The large block at `ptr` of `old` mapped bytes as one of `new`, its pages moved, not
/// copied: the kernel grows the mapping where it lies, or moves its page tables to a new
/// range aligned to a huge page (a buffer that doubles as rows arrive, a streamed put's,
/// would otherwise copy everything it holds at every doubling and touch twice its pages).
/// `None` when the kernel cannot; the block is then unchanged.
///
/// # Safety
/// `ptr` is a block of `old` mapped bytes from [`Recycling::alloc_large`]; on `Some` the
/// caller no longer uses `ptr` but the block returned.
unsafe fn remap(ptr: *mut u8, old: usize, new: usize) -> Option<*mut u8> {
    let start = ptr.cast::<libc::c_void>();
    // SAFETY: `start` is a whole mapping of `old` bytes that this pool made. Without
    // MREMAP_MAYMOVE it stays where it is: shrunk, or grown into free address space.
    let in_place = unsafe { libc::mremap(start, old, new, 0) };
    if in_place != libc::MAP_FAILED {
        return Some(ptr);
    }
    // A range of `new` bytes aligned to a huge page for the pages to move to; mremap
    // replaces the mapping there with the block's.
    let target = map(new);
    if target.is_null() {
        return None;
    }
    // SAFETY: the block moves onto `target`, a mapping of `new` bytes just made and used by
    // nothing else; on failure nothing moved and the target is unmapped.
    unsafe {
        let moved = libc::mremap(
            start,
            old,
            new,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            target.cast::<libc::c_void>(),
        );
        if moved == libc::MAP_FAILED {
            libc::munmap(target.cast(), new);
            return None;
        }
    }
    Some(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(start: usize, len: usize, since: Instant) -> Kept {
        Kept { start, len, since }
    }

    fn empty() -> Pool {
        Pool {
            kept: [None; SLOTS],
            bytes: 0,
            doomed: [None; SLOTS],
            reaper: None,
        }
    }

    #[test]
    fn doomed_blocks_go_to_the_reaper_at_once_and_only_as_many_as_it_has_room_for() {
        let now = Instant::now();
        let mut pool = empty();
        for i in 0..SLOTS {
            assert!(pool.doom(kept(i << 30, 64 << 20, now)));
        }
        assert!(
            !pool.doom(kept(99 << 30, 64 << 20, now)),
            "no room: the caller unmaps"
        );
        let mut expired = Vec::new();
        assert_eq!(pool.expire(now, &mut expired), None);
        assert_eq!(
            expired.len(),
            SLOTS,
            "every doomed block, without waiting for KEEP"
        );
        assert!(pool.doom(kept(0, 64 << 20, now)));
    }

    #[test]
    fn a_kept_block_is_reused_only_for_its_own_size() {
        let now = Instant::now();
        let mut pool = empty();
        let mut evicted = Vec::new();
        assert!(pool.keep(kept(1 << 30, 64 << 20, now), &mut evicted));
        assert_eq!(pool.take(32 << 20), None);
        assert_eq!(pool.take(64 << 20), Some(1 << 30));
        assert_eq!(pool.take(64 << 20), None);
        assert_eq!(pool.bytes, 0);
    }

    #[test]
    fn the_oldest_blocks_make_room_and_expire_first() {
        let now = Instant::now();
        let mut pool = empty();
        let mut evicted = Vec::new();
        for i in 0..SLOTS + 2 {
            let since = now + Duration::from_millis(i as u64);
            assert!(pool.keep(kept(i << 30, 32 << 20, since), &mut evicted));
        }
        let starts: Vec<usize> = evicted.iter().map(|k| k.start).collect();
        assert_eq!(starts, [0, 1 << 30]);
        assert_eq!(pool.bytes, SLOTS * (32 << 20));

        let mut expired = Vec::new();
        let later = now + KEEP + Duration::from_millis(4);
        let next = pool.expire(later, &mut expired);
        assert_eq!(expired.len(), 3); // kept at 2, 3 and 4 ms
        assert_eq!(next, Some(Duration::from_millis(1)));
        assert_eq!(pool.bytes, (SLOTS - 3) * (32 << 20));
    }

    #[test]
    fn a_block_past_the_budget_is_not_kept() {
        let mut pool = empty();
        let mut evicted = Vec::new();
        assert!(!pool.keep(kept(0, usize::MAX / 2, Instant::now()), &mut evicted));
        assert!(evicted.is_empty());
    }

    #[test]
    fn mappings_are_aligned_to_huge_pages() {
        let ptr = map(HUGE_PAGE * 2);
        assert!(!ptr.is_null());
        assert_eq!(ptr as usize % HUGE_PAGE, 0);
        unmap(&[kept(ptr as usize, HUGE_PAGE * 2, Instant::now())]);
    }

    #[test]
    fn a_growing_block_moves_into_a_kept_block_of_its_new_size() {
        // Sizes no other test uses: the pool is the process's.
        let recycling = Recycling(std::alloc::System);
        let small = Layout::from_size_align(38 << 20, 64).unwrap();
        let large = Layout::from_size_align(74 << 20, 64).unwrap();
        // SAFETY: blocks used within their layouts, freed with them.
        unsafe {
            let kept = recycling.alloc(large);
            recycling.dealloc(kept, large);
            let block = recycling.alloc(small);
            block.write_bytes(5, small.size());
            let grown = recycling.realloc(block, small, large.size());
            assert_eq!(grown, kept, "the kept block, already faulted in");
            assert_eq!(*grown.add(small.size() - 1), 5);
            recycling.dealloc(grown, large);
        }
    }

    #[test]
    fn a_large_block_grows_and_shrinks_keeping_its_bytes_in_place_or_moved() {
        let (old, new) = (16 * HUGE_PAGE, 64 * HUGE_PAGE);
        for blocked in [false, true] {
            let ptr = map(old);
            assert!(!ptr.is_null());
            // A mapping right after the block: it cannot grow where it lies and must move.
            let blocker = blocked.then(|| {
                // SAFETY: a new mapping at a free address or none (MAP_FIXED_NOREPLACE).
                let at = unsafe {
                    libc::mmap(
                        ptr.add(old).cast(),
                        HUGE_PAGE,
                        libc::PROT_READ,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                        -1,
                        0,
                    )
                };
                assert_ne!(at, libc::MAP_FAILED);
                at
            });
            // SAFETY: the block is `old` bytes, written within them, grown and shrunk by
            // `remap`, then used only through the pointer it returns and unmapped whole.
            unsafe {
                for page in (0..old).step_by(4096) {
                    *ptr.add(page) = (page / 4096) as u8;
                }
                let grown = remap(ptr, old, new).expect("the kernel moves mappings");
                assert_eq!(grown as usize % HUGE_PAGE, 0);
                if blocked {
                    assert_ne!(grown, ptr);
                }
                for page in (0..old).step_by(4096) {
                    assert_eq!(*grown.add(page), (page / 4096) as u8);
                }
                *grown.add(new - 1) = 9;
                let shrunk = remap(grown, new, old).expect("shrinking stays in place");
                assert_eq!(shrunk, grown);
                assert_eq!(*shrunk.add(old - 4096), ((old - 4096) / 4096) as u8);
                unmap(&[kept(shrunk as usize, old, Instant::now())]);
                if let Some(at) = blocker {
                    libc::munmap(at, HUGE_PAGE);
                }
            }
        }
    }
}
