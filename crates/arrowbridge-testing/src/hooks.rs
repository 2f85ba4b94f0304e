//! Hooks the Python test suite uses to reach code paths no built-in kernel takes.

use arrowbridge::{ArrowTensor, Kernel, Params, Result};
use pyo3::prelude::*;

use arrowbridge_pyo3::BridgeResult;

fn panics(_: &[ArrowTensor], params: &Params) -> Result<Vec<ArrowTensor>> {
    let message = match params.get("message") {
        Some(arrowbridge::Param::Str(s)) => s.clone(),
        _ => "no message".to_string(),
    };
    panic!("{message}")
}

/// Runs a kernel that panics with `message` through the same barrier `call` uses, so tests
/// can prove that a panic reaches Python as `KernelError`, not as a crash.
#[pyfunction]
pub fn panic_in_kernel(message: String) -> BridgeResult<()> {
    let kernel = Kernel::new("panics", "panics(x)", panics).params(&["message"]);
    let x = ArrowTensor::from_array(ndarray::ArrayD::<f64>::zeros(ndarray::IxDyn(&[1])));
    let params = Params::new([("message".to_string(), arrowbridge::Param::Str(message))]);
    kernel.call(&[x], params)?;
    Ok(())
}

/// Calls `f` `n` times inside [`arrowbridge_measured_region`], the one function whose
/// instructions `benchmarks/instructions.py` has callgrind count.
#[pyfunction]
pub fn measured_region(f: &Bound<'_, PyAny>, n: usize) -> PyResult<()> {
    arrowbridge_measured_region(f, n)
}

/// Callgrind collects inside this function only (`--toggle-collect`) and dumps its counts
/// after each return (`--dump-after`); its symbol name is fixed for that.
#[no_mangle]
#[inline(never)]
fn arrowbridge_measured_region(f: &Bound<'_, PyAny>, n: usize) -> PyResult<()> {
    for _ in 0..n {
        f.call0()?;
    }
    Ok(())
}
