//! `rownorm`: a complete PyO3 extension built on `arrowbridge-pyo3`.
//!
//! Its arguments take NumPy arrays, Arrow producers (pyarrow, polars, ...) and DLPack
//! producers (JAX, PyTorch) as `ndarray` views without copies; its results are NumPy arrays
//! over the memory Rust allocated; its errors are arrowbridge's exception classes, or the
//! built-in ones they derive from when the arrowbridge package is not installed.

use arrowbridge_pyo3::arrowbridge::Error;
use arrowbridge_pyo3::{ArrayArg2, ArrayArgMutDyn, ArrayOut, BridgeResult};
use ndarray::{Axis, Ix2};
use pyo3::prelude::*;

/// Each row of a 2-D float64 array divided by its Euclidean norm.
///
/// A row of zeros raises `arrowbridge.InvalidArrowDataError` (a `ValueError`).
#[pyfunction]
fn normalize_rows(x: ArrayArg2<'_, f64>) -> BridgeResult<ArrayOut<f64, Ix2>> {
    let mut out = x.as_array().to_owned();
    for (i, mut row) in out.axis_iter_mut(Axis(0)).enumerate() {
        let norm = row.dot(&row).sqrt();
        if norm == 0.0 {
            return Err(Error::invalid(format!("row {i}"), "has norm 0").into());
        }
        row /= norm;
    }
    Ok(ArrayOut(out))
}

/// Clips a writable float64 NumPy array, of any rank, to `[lo, hi]` in place.
#[pyfunction]
fn clip(mut x: ArrayArgMutDyn<'_, f64>, lo: f64, hi: f64) {
    x.as_array_mut().mapv_inplace(|v| v.clamp(lo, hi));
}

#[pymodule]
fn rownorm(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Makes this crate's process-wide caches now, so that a fork never inherits one half made.
    arrowbridge_pyo3::prepare_for_fork(m.py())?;
    m.add_function(wrap_pyfunction!(normalize_rows, m)?)?;
    m.add_function(wrap_pyfunction!(clip, m)?)?;
    Ok(())
}
