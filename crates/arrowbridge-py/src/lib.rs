//! Python bindings of arrowbridge. This file only registers; each exposed piece lives in a
//! file of its own.

mod aio;
mod call;
mod convert;
mod flight;
mod fork;
mod ipc;
mod ragged;

use pyo3::prelude::*;

/// Rust allocations of the extension (Flight messages, received arrays, kernel results) come
/// from mimalloc, which keeps freed memory for reuse: with the system allocator, every 8 MiB
/// Flight message was a fresh mapping, faulted in page by page and returned right after,
/// and that halved Flight throughput. Python's own allocations are not affected; memory
/// handed to NumPy is freed by Rust, through the same allocator.
/// Every allocation of 64 bytes or more is aligned to 64 bytes, so JAX adopts kernel results
/// through DLPack instead of copying them. Blocks of 32 MiB or more (received arrays) are
/// kept for a second after they are freed (`Recycling`): the next array of the same size
/// lands in pages already faulted in, which made repeated 1 GiB Flight puts and gets run at
/// the speed of the socket instead of the page-fault handler's.
#[global_allocator]
static ALLOCATOR: arrowbridge_pyo3::Recycling<arrowbridge_pyo3::Aligned64<mimalloc::MiMalloc>> =
    arrowbridge_pyo3::Recycling(arrowbridge_pyo3::Aligned64(mimalloc::MiMalloc));

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Caches made now, at import, cannot be half made when a thread forks the process.
    arrowbridge_pyo3::prepare_for_fork(m.py())?;
    m.add("call", call::function(m)?)?;
    m.add_function(wrap_pyfunction!(call::kernels, m)?)?;
    m.add_function(wrap_pyfunction!(call::load_kernels, m)?)?;
    m.add_function(wrap_pyfunction!(convert::export_array, m)?)?;
    m.add_function(wrap_pyfunction!(convert::to_numpy, m)?)?;
    m.add_function(wrap_pyfunction!(ragged::export_ragged_list, m)?)?;
    m.add_function(wrap_pyfunction!(ragged::export_ragged_parts, m)?)?;
    m.add_function(wrap_pyfunction!(ragged::ragged_parts, m)?)?;
    m.add_function(wrap_pyfunction!(ipc::write_arrays, m)?)?;
    m.add_function(wrap_pyfunction!(ipc::write_stream, m)?)?;
    m.add_class::<ipc::IpcReader>()?;
    m.add_class::<ipc::AtomicWrite>()?;
    m.add_class::<flight::FlightServer>()?;
    m.add_class::<flight::FlightClient>()?;
    m.add_class::<flight::FlightStream>()?;
    m.add_class::<flight::FlightPut>()?;
    m.add_class::<aio::PendingCall>()?;
    m.add_class::<aio::Completions>()?;
    m.add_function(wrap_pyfunction!(flight::stream_to_arrays, m)?)?;
    arrowbridge_pyo3::internal::arrow_memory::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
