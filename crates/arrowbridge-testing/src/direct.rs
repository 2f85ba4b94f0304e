//! The direct rust-numpy path (`PyReadonlyArray` → `ArrayView` → `PyArray`), kept as the
//! yardstick that benchmarks compare `call("identity", x)` against.

use numpy::{IntoPyArray, PyArray, PyArrayDyn, PyReadonlyArrayDyn};
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

/// Sums `x` over `axis` (all axes when `None`) into a new float64 array, the way a
/// rust-numpy function would: the yardstick of `call("sum", x, axis=...)`.
#[pyfunction]
#[pyo3(signature = (x, axis=None))]
pub fn rust_numpy_sum<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f64>,
    axis: Option<usize>,
) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
    let view = x.as_array();
    let out = match axis {
        None => ndarray::ArrayD::from_elem(ndarray::IxDyn(&[]), view.sum()),
        Some(a) if a < view.ndim() => view.sum_axis(ndarray::Axis(a)),
        Some(a) => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "axis {a} is out of bounds"
            )))
        }
    };
    Ok(out.into_pyarray(py))
}
