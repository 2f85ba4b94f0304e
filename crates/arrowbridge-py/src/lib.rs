//! Python bindings of arrowbridge. This file only registers; each exposed piece lives in a
//! file of its own.

mod call;
mod convert;
#[cfg(feature = "testing")]
mod direct;
mod flight;
mod ipc;
#[cfg(feature = "testing")]
mod testing;

use pyo3::prelude::*;

/// Rust allocations of the extension (Flight messages, received arrays, kernel results) come
/// from mimalloc, which keeps freed memory for reuse: with the system allocator, every 8 MiB
/// Flight message was a fresh mapping, faulted in page by page and returned right after,
/// and that halved Flight throughput. Python's own allocations are not affected; memory
/// handed to NumPy is freed by Rust, through the same allocator.
#[global_allocator]
static ALLOCATOR: Aligned = Aligned;

/// mimalloc, with every allocation of 64 bytes or more aligned to 64 bytes: Arrow's own
/// alignment, and what XLA needs to adopt a kernel's result through DLPack
/// (`jax.dlpack.from_dlpack`) instead of copying it.
struct Aligned;

const ALIGN: usize = 64;

fn widened(layout: std::alloc::Layout, size: usize) -> std::alloc::Layout {
    if size >= ALIGN && layout.align() < ALIGN {
        // SAFETY: 64 is a power of two, and `size` rounded up to it does not overflow isize
        // (the caller's layout had at most that size, or the allocator refuses it).
        unsafe { std::alloc::Layout::from_size_align_unchecked(size, ALIGN) }
    } else {
        layout
    }
}

// SAFETY: every call forwards to mimalloc with a layout of the same size and at least the
// requested alignment; mimalloc frees any block whatever its alignment.
unsafe impl std::alloc::GlobalAlloc for Aligned {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe { mimalloc::MiMalloc.alloc(widened(layout, layout.size())) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(widened(layout, layout.size())) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: see the impl.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl; mimalloc reads only the alignment of the layout.
        unsafe { mimalloc::MiMalloc.realloc(ptr, widened(layout, new_size), new_size) }
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("call", call::function(m)?)?;
    m.add_function(wrap_pyfunction!(call::kernels, m)?)?;
    m.add_function(wrap_pyfunction!(call::load_kernels, m)?)?;
    m.add_function(wrap_pyfunction!(convert::export_array, m)?)?;
    m.add_function(wrap_pyfunction!(convert::to_numpy, m)?)?;
    m.add_function(wrap_pyfunction!(convert::data_address, m)?)?;
    #[cfg(feature = "testing")]
    {
        m.add_function(wrap_pyfunction!(direct::rust_numpy_identity, m)?)?;
        m.add_function(wrap_pyfunction!(direct::rust_numpy_sum, m)?)?;
        m.add_function(wrap_pyfunction!(testing::measured_region, m)?)?;
        m.add_function(wrap_pyfunction!(testing::panic_in_kernel, m)?)?;
    }
    m.add_function(wrap_pyfunction!(ipc::write_arrays, m)?)?;
    m.add_function(wrap_pyfunction!(ipc::write_stream, m)?)?;
    m.add_class::<ipc::IpcReader>()?;
    m.add_class::<flight::FlightServer>()?;
    m.add_class::<flight::FlightClient>()?;
    m.add_function(wrap_pyfunction!(flight::stream_to_arrays, m)?)?;
    arrowbridge_pyo3::arrow_memory::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
