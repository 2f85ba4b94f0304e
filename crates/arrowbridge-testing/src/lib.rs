//! `arrowbridge_testing`: hooks the Python test suite and the benchmarks use, built into the
//! test environment by `make build` and never part of the arrowbridge wheel, so the
//! extension users install is the one the tests run against.

mod direct;
mod hooks;

use pyo3::prelude::*;

#[pymodule]
fn arrowbridge_testing(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(direct::rust_numpy_identity, m)?)?;
    m.add_function(wrap_pyfunction!(direct::rust_numpy_sum, m)?)?;
    m.add_function(wrap_pyfunction!(hooks::measured_region, m)?)?;
    m.add_function(wrap_pyfunction!(hooks::panic_in_kernel, m)?)?;
    Ok(())
}
