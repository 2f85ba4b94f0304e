//! `rowstats`: an example extension built on `arrowbridge-pyo3`.
//!
//! Each function takes any array producer (NumPy, pyarrow, polars, duckdb, nanoarrow,
//! arro3, JAX, PyTorch, ...) as an `ndarray` view, without a copy, and returns NumPy arrays
//! that own Rust memory, without a copy. The `*_numpy` functions are the same code written
//! with rust-numpy's `PyReadonlyArray`, which takes NumPy arrays only: the benchmarks
//! compare the two.

use arrowbridge_pyo3::arrowbridge::Error;
use arrowbridge_pyo3::{
    ArrayArg1, ArrayArg2, ArrayArgDyn, ArrayArgMutDyn, ArrayOut, BridgeResult, RaggedArg,
};
use ndarray::{Array1, ArrayView2, Axis, Ix1};
use numpy::{PyReadonlyArray2, PyReadonlyArrayDyn};
use pyo3::prelude::*;

/// Arrays of 64 bytes or more are aligned to 64 bytes, so that JAX adopts results through
/// DLPack instead of copying them (XLA wants that alignment).
#[global_allocator]
static ALLOCATOR: arrowbridge_pyo3::Aligned64<std::alloc::System> =
    arrowbridge_pyo3::Aligned64(std::alloc::System);

/// The sum of all elements, of any rank.
#[pyfunction]
fn total(x: ArrayArgDyn<'_, f64>) -> f64 {
    x.as_array().sum()
}

/// `total` for float32 data (JAX's default dtype).
#[pyfunction]
fn total32(x: ArrayArgDyn<'_, f32>) -> f32 {
    x.as_array().sum()
}

/// The mean of each row of a 2-D array: a new array, handed to Python without a copy.
#[pyfunction]
fn row_means(x: ArrayArg2<'_, f64>) -> ArrayOut<f64, Ix1> {
    ArrayOut(means(x.as_array()))
}

/// The dot product of two vectors of the same length.
#[pyfunction]
fn dot(a: ArrayArg1<'_, f64>, b: ArrayArg1<'_, f64>) -> PyResult<f64> {
    let (a, b) = (a.as_array(), b.as_array());
    if a.len() != b.len() {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "dot: lengths {} and {} differ",
            a.len(),
            b.len()
        )));
    }
    Ok(a.dot(&b))
}

/// Scales a writable NumPy array in place.
#[pyfunction]
fn scale(mut x: ArrayArgMutDyn<'_, f64>, factor: f64) {
    x.as_array_mut().mapv_inplace(|v| v * factor);
}

/// Adds `x` to `out` in place. `out` and `x` may not be the same array: Rust would see the
/// same memory through a mutable and a shared view at once.
#[pyfunction]
fn add_into(mut out: ArrayArgMutDyn<'_, f64>, x: ArrayArgDyn<'_, f64>) {
    let mut out = out.as_array_mut();
    out += &x.as_array();
}

/// The address of the first element Rust sees: the same as the producer's when no copy was
/// made.
#[pyfunction]
fn address(x: ArrayArgDyn<'_, f64>) -> usize {
    x.as_array().as_ptr() as usize
}

/// `0, 1, ..., n - 1` and the address Rust allocated them at: the NumPy array Python gets
/// is that memory, not a copy of it.
#[pyfunction]
fn arange(n: usize) -> (ArrayOut<f64, Ix1>, usize) {
    let a = Array1::from_iter((0..n).map(|i| i as f64));
    let address = a.as_ptr() as usize;
    (ArrayOut(a), address)
}

/// The mean of each tensor of ragged data (a list of arrays of different shapes, or an
/// `arrow.variable_shape_tensor`), NaN for an empty one.
#[pyfunction]
fn ragged_means(x: RaggedArg<'_, f64>) -> ArrayOut<f64, Ix1> {
    ArrayOut(x.rows().map(|r| r.mean().unwrap_or(f64::NAN)).collect())
}

/// The address of each row Rust sees: those of the Arrow memory when no copy was made.
#[pyfunction]
fn ragged_addresses(x: RaggedArg<'_, f64>) -> Vec<usize> {
    x.rows().map(|r| r.as_ptr() as usize).collect()
}

/// Raises the error of the `arrowbridge::Error` variant named `variant`: a demonstration of
/// what an extension's errors become in Python. With the arrowbridge package installed each
/// is the class of `arrowbridge.errors` that names it; without, the built-in class that class
/// derives from (`ValueError`, `TypeError`, `MemoryError`, ...), with the same message. The
/// tests raise every variant both ways.
#[pyfunction]
fn raise_error(variant: &str) -> BridgeResult<()> {
    let what = || "x".to_string();
    let text = |s: &str| s.to_string();
    let error = match variant {
        "Nulls" => Error::Nulls {
            what: what(),
            count: 2,
        },
        "Misaligned" => Error::Misaligned {
            what: what(),
            address: 0x1001,
            align: 8,
            misalignment: 1,
        },
        "ByteOrder" => Error::ByteOrder {
            what: what(),
            dtype: text(">f8"),
        },
        "UnsupportedType" => Error::UnsupportedType {
            what: what(),
            kind: "dtype",
            name: text("object"),
        },
        "Device" => Error::Device {
            what: what(),
            device: text("cuda:0"),
        },
        "ReadOnly" => Error::ReadOnly { what: what() },
        "AlreadyBorrowed" => Error::AlreadyBorrowed {
            what: what(),
            how: "a mutable view must be alone",
        },
        "DType" => Error::DType {
            kernel: text("k"),
            arg: 0,
            expected: text("float64"),
            got: text("int64"),
        },
        "Mismatch" => Error::Mismatch {
            what: what(),
            expected: text("float64"),
            got: text("int64"),
        },
        "Shape" => Error::shape("row_means", "1 dimension(s), expected 2"),
        "UnknownKernel" => Error::UnknownKernel {
            name: text("nope"),
            available: text("sum"),
        },
        "Param" => Error::Param {
            kernel: text("k"),
            name: text("axis"),
            message: text("unknown"),
        },
        "CopyRequired" => Error::CopyRequired {
            what: what(),
            reason: text("Fortran order"),
        },
        "InvalidData" => Error::invalid(what(), "offsets decrease"),
        "Kernel" => Error::kernel("k", "diverged"),
        "Io" => Error::Io {
            path: text("/nonexistent"),
            source: std::io::ErrorKind::NotFound.into(),
        },
        "BadFile" => Error::BadFile {
            path: text("x.arrow"),
            message: text("truncated"),
        },
        "Plugin" => Error::Plugin {
            path: text("libk.so"),
            message: text("no such file"),
        },
        "OutOfMemory" => Error::OutOfMemory {
            what: what(),
            bytes: 1 << 50,
            reason: text("over the limit"),
        },
        "Arrow" => Error::Arrow(arrowbridge_pyo3::arrowbridge::ArrowError::ComputeError(
            text("overflow"),
        )),
        other => {
            let message = format!("no arrowbridge::Error variant {other:?}");
            return Err(pyo3::exceptions::PyKeyError::new_err(message).into());
        }
    };
    Err(error.into())
}

/// `total`, with rust-numpy's argument type.
#[pyfunction]
fn total_numpy(x: PyReadonlyArrayDyn<'_, f64>) -> f64 {
    x.as_array().sum()
}

/// `row_means`, with rust-numpy's argument and return types.
#[pyfunction]
fn row_means_numpy<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f64>,
) -> Bound<'py, numpy::PyArray1<f64>> {
    numpy::IntoPyArray::into_pyarray(means(x.as_array()), py)
}

fn means(x: ArrayView2<'_, f64>) -> Array1<f64> {
    let n = x.ncols().max(1) as f64;
    x.sum_axis(Axis(1)) / n
}

#[pymodule]
fn rowstats(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(total, m)?)?;
    m.add_function(wrap_pyfunction!(total32, m)?)?;
    m.add_function(wrap_pyfunction!(row_means, m)?)?;
    m.add_function(wrap_pyfunction!(dot, m)?)?;
    m.add_function(wrap_pyfunction!(scale, m)?)?;
    m.add_function(wrap_pyfunction!(add_into, m)?)?;
    m.add_function(wrap_pyfunction!(address, m)?)?;
    m.add_function(wrap_pyfunction!(arange, m)?)?;
    m.add_function(wrap_pyfunction!(ragged_means, m)?)?;
    m.add_function(wrap_pyfunction!(ragged_addresses, m)?)?;
    m.add_function(wrap_pyfunction!(raise_error, m)?)?;
    m.add_function(wrap_pyfunction!(total_numpy, m)?)?;
    m.add_function(wrap_pyfunction!(row_means_numpy, m)?)?;
    Ok(())
}
