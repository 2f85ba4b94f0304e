//! arrowbridge for PyO3 extension authors: arguments that take NumPy arrays, Arrow
//! producers and DLPack producers alike as `ndarray` views, and results that go back to
//! Python as NumPy arrays, without copies.
//!
//! The bindings of arrowbridge itself (`arrowbridge._native`) are built on this crate, so
//! an extension's arguments are checked as arrowbridge's own are, and a bad one raises the
//! same exception of `arrowbridge.errors`.

#![deny(missing_docs)]

mod alloc;
mod arg;
mod errors;
#[doc(hidden)]
pub mod internal;
mod ragged_arg;
mod recycle;

// The conversion code lives in `internal`; the crate's own modules reach it by these names.
use internal::{arrow_memory, capsule, dlpack, input, numpy_input, numpy_output, ragged};

pub use alloc::Aligned64;
pub use arg::{
    ArgElement, ArrayArg, ArrayArg1, ArrayArg2, ArrayArgDyn, ArrayArgMut, ArrayArgMut1,
    ArrayArgMut2, ArrayArgMutDyn, ArrayOut,
};
/// The core crate (no Python in it): [`arrowbridge::Error`], the one error type an
/// extension returns, [`arrowbridge::ArrowTensor`], [`arrowbridge::RaggedTensor`], the IPC
/// reader and writer. Re-exported so that an extension names the version this crate uses.
pub use arrowbridge;
pub use errors::{no_panic, BridgeError, BridgeResult};
pub use ragged_arg::RaggedArg;
pub use recycle::Recycling;

/// Initialises every process-wide cache of this crate (NumPy's API and dtypes, the DLPack
/// call's arguments, `arrowbridge.errors` where it is installed). Call it from your module's
/// initialisation: a cache is then never half made when a thread forks the process (a
/// child that inherits one half made would wait for it forever).
///
/// ```no_run
/// use pyo3::prelude::*;
///
/// #[pymodule]
/// fn my_extension(m: &Bound<'_, PyModule>) -> PyResult<()> {
///     arrowbridge_pyo3::prepare_for_fork(m.py())?;
///     Ok(())
/// }
/// ```
pub fn prepare_for_fork(py: pyo3::Python<'_>) -> pyo3::PyResult<()> {
    numpy::PyArray1::<f64>::zeros(py, 0, false);
    for dtype in arrowbridge::ALL_DTYPES {
        numpy_output::descr(py, dtype)?;
    }
    numpy_input::masked_type(py)?;
    dlpack::dlpack_args(py);
    errors::prepare(py);
    Ok(())
}
