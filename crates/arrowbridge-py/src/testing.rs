//! Hooks the Python test suite uses to reach code paths no built-in kernel takes.

use arrowbridge::{ArrowTensor, Kernel, Params, Result};
use pyo3::prelude::*;

use crate::errors::BridgeResult;

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
