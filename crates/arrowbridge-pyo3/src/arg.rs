//! Function arguments that take any array producer as a typed `ndarray` view, and results
//! that go back to Python without a copy.
//!
//! [`ArrayArg`] is the counterpart of rust-numpy's `PyReadonlyArray` that also takes Arrow
//! PyCapsule producers (pyarrow, polars, duckdb, nanoarrow, arro3) and DLPack producers
//! (JAX, PyTorch): NumPy arrays are borrowed under rust-numpy's borrow rules, the others
//! are imported without a copy and held for as long as the argument lives.
//! [`ArrayArgMut`] is the counterpart of `PyReadwriteArray`, for writable NumPy arrays.
//! [`ArrayOut`] returns an owned `ndarray::Array` as a NumPy array over the same memory.
//!
//! A bad argument raises the exception of `arrowbridge.errors` that arrowbridge's own
//! functions raise (`DTypeMismatchError`, `ShapeError`, `NullValuesError`, ...), and PyO3
//! adds a note naming the parameter (`while processing 'x'`).

use arrowbridge::{ArrowTensor, DType, Error};
use ndarray::{Array, ArrayView, ArrayViewMut, Dimension, Ix1, Ix2, IxDyn, RawArrayView};
use numpy::{
    BorrowError, PyArray, PyArrayMethods, PyReadonlyArray, PyReadwriteArray, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::Borrowed;

use crate::errors::{BridgeError, BridgeResult};
use crate::input::{dlpack_numpy, protocol, read_tensor, unsupported, Protocol};
use crate::numpy_input::{data_address, numpy_dtype, reject_masked, Want};
use crate::numpy_output::tensor_into_numpy;

/// An element type both arrowbridge and rust-numpy know: `i8`–`i64`, `u8`–`u64`,
/// `half::f16`, `f32`, `f64`, `Complex<f32>` and `Complex<f64>`. A `u8` argument also takes
/// `bool` data (0 is false, anything else true).
pub trait ArgElement: arrowbridge::Element + numpy::Element {}

impl<T: arrowbridge::Element + numpy::Element> ArgElement for T {}

/// A read-only `ndarray` view of any array producer, for a `#[pyfunction]` argument.
///
/// Takes NumPy arrays (borrowed as `PyReadonlyArray` borrows them, so no Rust code writes
/// to the memory while this view lives), Arrow producers with `__arrow_c_array__` or
/// `__arrow_c_stream__` (1-D arrays, `arrow.fixed_shape_tensor` arrays, one-column tables)
/// and DLPack producers with `__dlpack__` (CPU memory, any strides). No input is copied,
/// except an Arrow stream of several chunks, which is concatenated.
///
/// The input must have dtype `T` and, for a fixed-rank `D`, exactly `D`'s number of
/// dimensions; it must hold no nulls, be aligned for `T` and be in native byte order.
///
/// ```no_run
/// use arrowbridge_pyo3::{ArrayArg2, ArrayOut};
/// use ndarray::Array1;
/// use pyo3::prelude::*;
///
/// /// The sum of each row.
/// #[pyfunction]
/// fn row_sums(x: ArrayArg2<'_, f64>) -> ArrayOut<f64, ndarray::Ix1> {
///     let x = x.as_array();
///     ArrayOut(x.rows().into_iter().map(|r| r.sum()).collect::<Array1<f64>>())
/// }
/// ```
pub struct ArrayArg<'py, T: ArgElement, D: Dimension> {
    source: Source<'py, T, D>,
}

/// Where an argument's elements are, and what keeps them alive (and borrowed).
enum Source<'py, T: ArgElement, D: Dimension> {
    /// A NumPy array (a DLPack tensor is viewed through one), borrowed read-only.
    Numpy(PyReadonlyArray<'py, T, D>),
    /// An imported Arrow array, and its elements, valid while the tensor lives.
    Arrow(ArrowTensor, RawArrayView<T, D>),
}

/// [`ArrayArg`] of one dimension.
pub type ArrayArg1<'py, T> = ArrayArg<'py, T, Ix1>;
/// [`ArrayArg`] of two dimensions.
pub type ArrayArg2<'py, T> = ArrayArg<'py, T, Ix2>;
/// [`ArrayArg`] of any number of dimensions.
pub type ArrayArgDyn<'py, T> = ArrayArg<'py, T, IxDyn>;

impl<'py, T: ArgElement, D: Dimension> ArrayArg<'py, T, D> {
    /// The elements, in the input's memory.
    pub fn as_array(&self) -> ArrayView<'_, T, D> {
        match &self.source {
            Source::Numpy(array) => array.as_array(),
            // SAFETY: `view` describes the tensor's memory, which the tensor keeps alive for
            // as long as `self`, so for the lifetime of the returned view.
            Source::Arrow(_tensor, view) => unsafe { view.clone().deref_into_view() },
        }
    }

    /// The elements as a slice, when they are contiguous in C order.
    pub fn as_slice(&self) -> Option<&[T]> {
        let view = self.as_array();
        let slice = view.as_slice()?;
        // SAFETY: as in `as_array`: the memory outlives `&self`.
        Some(unsafe { std::slice::from_raw_parts(slice.as_ptr(), slice.len()) })
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        match &self.source {
            Source::Numpy(array) => array.shape(),
            Source::Arrow(_, view) => view.shape(),
        }
    }

    /// Reads `obj` (see the type's documentation).
    pub fn extract_from(obj: &Bound<'py, PyAny>) -> BridgeResult<Self> {
        if let Ok(array) = obj.cast::<PyUntypedArray>() {
            return Self::from_numpy(array);
        }
        match protocol(obj)? {
            Protocol::DLPack => Self::from_numpy(&dlpack_numpy(obj)?),
            p @ (Protocol::ArrowArray | Protocol::ArrowStream) => {
                let tensor = read_tensor(obj, p, Want::Rows, None)?;
                check_dtype::<T>(tensor.dtype())?;
                check_rank::<D>(tensor.shape().len())?;
                let view = tensor
                    .view::<T>()?
                    .into_dimensionality::<D>()
                    .map_err(|e| Error::shape("argument", e.to_string()))?
                    .raw_view();
                Ok(ArrayArg {
                    source: Source::Arrow(tensor, view),
                })
            }
            Protocol::Numpy | Protocol::Unknown => Err(unsupported(obj)),
        }
    }

    fn from_numpy(array: &Bound<'py, PyUntypedArray>) -> BridgeResult<Self> {
        let typed = checked_numpy::<T, D>(array)?;
        let borrowed = typed.try_readonly().map_err(|e| borrow_error(e, false))?;
        Ok(ArrayArg {
            source: Source::Numpy(borrowed),
        })
    }
}

impl<'a, 'py, T: ArgElement, D: Dimension> FromPyObject<'a, 'py> for ArrayArg<'py, T, D> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(Self::extract_from(&obj)?)
    }
}

/// A mutable `ndarray` view of a writable NumPy array, for a `#[pyfunction]` argument: the
/// counterpart of rust-numpy's `PyReadwriteArray`, with arrowbridge's checks and errors.
///
/// While it lives, no other view of the same memory may be borrowed from Rust: a second
/// `ArrayArgMut` or an [`ArrayArg`] of it raises `AlreadyBorrowedError`, and a read-only
/// array raises `ReadOnlyError`. Only NumPy arrays are taken: other producers do not
/// promise that nobody else writes to their memory.
pub struct ArrayArgMut<'py, T: ArgElement, D: Dimension> {
    array: PyReadwriteArray<'py, T, D>,
}

/// [`ArrayArgMut`] of one dimension.
pub type ArrayArgMut1<'py, T> = ArrayArgMut<'py, T, Ix1>;
/// [`ArrayArgMut`] of two dimensions.
pub type ArrayArgMut2<'py, T> = ArrayArgMut<'py, T, Ix2>;
/// [`ArrayArgMut`] of any number of dimensions.
pub type ArrayArgMutDyn<'py, T> = ArrayArgMut<'py, T, IxDyn>;

impl<'py, T: ArgElement, D: Dimension> ArrayArgMut<'py, T, D> {
    /// The elements, writable.
    pub fn as_array_mut(&mut self) -> ArrayViewMut<'_, T, D> {
        self.array.as_array_mut()
    }

    /// The elements.
    pub fn as_array(&self) -> ArrayView<'_, T, D> {
        self.array.as_array()
    }

    /// Borrows `obj` mutably (see the type's documentation).
    pub fn extract_from(obj: &Bound<'py, PyAny>) -> BridgeResult<Self> {
        let Ok(array) = obj.cast::<PyUntypedArray>() else {
            let e = unsupported(obj);
            return Err(match protocol(obj)? {
                Protocol::Unknown => e,
                _ => Error::UnsupportedType {
                    what: "mutable argument".into(),
                    kind: "object type",
                    name: format!(
                        "{} (a mutable view takes a writable numpy.ndarray only)",
                        obj.get_type().name()?
                    ),
                }
                .into(),
            });
        };
        let typed = checked_numpy::<T, D>(array)?;
        let array = typed.try_readwrite().map_err(|e| borrow_error(e, true))?;
        Ok(ArrayArgMut { array })
    }
}

impl<'a, 'py, T: ArgElement, D: Dimension> FromPyObject<'a, 'py> for ArrayArgMut<'py, T, D> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(Self::extract_from(&obj)?)
    }
}

/// An owned array returned to Python as a NumPy array over the same memory (no copy): the
/// return type of a `#[pyfunction]`. The NumPy array is writable, and it exports
/// `__dlpack__`, so JAX and PyTorch take it without a copy too.
pub struct ArrayOut<T: ArgElement, D: Dimension>(pub Array<T, D>);

impl<'py, T: ArgElement, D: Dimension> IntoPyObject<'py> for ArrayOut<T, D> {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let tensor = ArrowTensor::from_array(self.0.into_dyn());
        Ok(tensor_into_numpy(py, tensor, true)?)
    }
}

impl<T: ArgElement, D: Dimension> From<Array<T, D>> for ArrayOut<T, D> {
    fn from(array: Array<T, D>) -> Self {
        ArrayOut(array)
    }
}

/// `array` as a `PyArray<T, D>` once its dtype, rank, alignment and mask were checked.
fn checked_numpy<'a, 'py, T: ArgElement, D: Dimension>(
    array: &'a Bound<'py, PyUntypedArray>,
) -> BridgeResult<&'a Bound<'py, PyArray<T, D>>> {
    reject_masked(array)?;
    let descr = array.dtype();
    // NumPy's built-in dtypes in native byte order are singletons: the same object is `T`'s.
    if !descr.is(T::get_dtype(array.py())) {
        check_dtype::<T>(numpy_dtype(&descr)?)?;
    }
    check_rank::<D>(array.ndim())?;
    let address = data_address(array);
    let align = std::mem::align_of::<T>();
    if !array.is_empty() && !address.is_multiple_of(align) {
        return Err(Error::Misaligned {
            what: format!("argument of dtype {}", T::DTYPE),
            address,
            align,
            misalignment: address % align,
        }
        .into());
    }
    // SAFETY: the array's dtype is one `T` accepts (same size and alignment, every bit
    // pattern a valid `T`: `arrowbridge::Element` is sealed on that promise) and it has
    // `D`'s rank; a `bool` array read as `u8` is the only case where NumPy's dtype differs
    // from `T`'s, and rust-numpy's borrow tracking does not depend on the dtype.
    Ok(unsafe { array.cast_unchecked::<PyArray<T, D>>() })
}

fn check_dtype<T: ArgElement>(dtype: DType) -> BridgeResult<()> {
    if T::accepts(dtype) {
        return Ok(());
    }
    Err(Error::Mismatch {
        what: "argument".into(),
        expected: T::DTYPE.name(),
        got: dtype.name(),
    }
    .into())
}

fn check_rank<D: Dimension>(ndim: usize) -> BridgeResult<()> {
    match D::NDIM {
        Some(n) if n != ndim => {
            Err(Error::shape("argument", format!("{ndim} dimension(s), expected {n}")).into())
        }
        _ => Ok(()),
    }
}

/// The error for a borrow rust-numpy refuses; `mutable` says which kind was asked for.
fn borrow_error(e: BorrowError, mutable: bool) -> BridgeError {
    match e {
        BorrowError::NotWriteable => Error::ReadOnly {
            what: "argument".into(),
        },
        // AlreadyBorrowed, and whatever later versions add
        _ => Error::AlreadyBorrowed {
            what: "argument".into(),
            how: if mutable {
                "a mutable view must be the only view borrowed from Rust"
            } else {
                "a read-only view cannot share memory with a live mutable one"
            },
        },
    }
    .into()
}
