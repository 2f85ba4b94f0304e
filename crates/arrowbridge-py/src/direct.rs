//! The direct rust-numpy path (`PyReadonlyArray` → `ArrayView` → `PyArray`), kept as the
//! yardstick that benchmarks compare `call("identity", x)` against.

use numpy::{PyArray, PyArrayDyn, PyReadonlyArrayDyn};
use pyo3::prelude::*;

/// Returns a new float64 array sharing `x`'s memory, the way a rust-numpy function would.
#[pyfunction]
pub fn rust_numpy_identity<'py>(x: PyReadonlyArrayDyn<'py, f64>) -> Bound<'py, PyArrayDyn<f64>> {
    let view = x.as_array();
    let owner = x.as_any().clone();
    // SAFETY: `owner` is the array that owns the memory `view` points into; it becomes the
    // new array's base and so outlives it.
    unsafe { PyArray::borrow_from_array(&view, owner) }
}
