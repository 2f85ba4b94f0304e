//! The errors of the binding layer, and the Python exceptions they become.
//!
//! Every [`arrowbridge::Error`] variant is raised as one class of `arrowbridge.errors` when
//! the arrowbridge Python package can be imported, and otherwise as the built-in class that
//! class derives from (`TypeError`, `ValueError`, `MemoryError`, ...), with the same
//! message. So an extension built on this crate needs no Python package besides NumPy, and
//! `except ValueError` catches the same errors with or without arrowbridge installed.

use std::fmt;

use arrowbridge::Error;
use pyo3::exceptions::{
    PyBufferError, PyException, PyImportError, PyLookupError, PyMemoryError, PyModuleNotFoundError,
    PyOSError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use pyo3::{PyErrArguments, PyTypeInfo};

/// An error on its way to Python: one of arrowbridge's, or an exception Python already
/// raised. A `#[pyfunction]` that returns [`BridgeResult`] raises it: an
/// [`arrowbridge::Error`] as the class of `arrowbridge.errors` that names it (or, without
/// the arrowbridge package, the built-in class that class derives from), a [`PyErr`] as it
/// is.
///
/// ```
/// use arrowbridge_pyo3::arrowbridge::Error;
/// use arrowbridge_pyo3::{ArrayArg1, BridgeResult};
/// use pyo3::prelude::*;
///
/// /// The index of the largest element: `ValueError` (`arrowbridge.ShapeError` where
/// /// arrowbridge is installed) for an empty array.
/// #[pyfunction]
/// fn argmax(x: ArrayArg1<'_, f64>) -> BridgeResult<usize> {
///     let x = x.as_array();
///     if x.is_empty() {
///         return Err(Error::shape("argmax", "the array is empty").into());
///     }
///     Ok((0..x.len()).fold(0, |best, i| if x[i] > x[best] { i } else { best }))
/// }
///
/// let error = arrowbridge_pyo3::BridgeError::from(Error::shape("argmax", "the array is empty"));
/// assert_eq!(error.to_string(), "argmax: the array is empty");
/// ```
#[derive(Debug)]
pub enum BridgeError {
    /// An arrowbridge error, raised as the Python class that names it.
    Core(Error),
    /// An exception made by Python or PyO3, raised as it is.
    Python(PyErr),
}

/// `Result` of functions that raise arrowbridge's errors (see [`BridgeError`]).
///
/// ```
/// use arrowbridge_pyo3::arrowbridge::Error;
/// use arrowbridge_pyo3::BridgeResult;
///
/// fn positive(n: i64) -> BridgeResult<u64> {
///     u64::try_from(n).map_err(|_| Error::invalid("n", format!("{n} is negative")).into())
/// }
/// assert!(positive(-1).is_err());
/// ```
pub type BridgeResult<T> = Result<T, BridgeError>;

impl fmt::Display for BridgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BridgeError::Core(e) => e.fmt(f),
            BridgeError::Python(e) => e.fmt(f),
        }
    }
}

/// Transparent: the wrapped error's message, and its source.
impl std::error::Error for BridgeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BridgeError::Core(e) => e.source(),
            BridgeError::Python(e) => e.source(),
        }
    }
}

impl From<Error> for BridgeError {
    fn from(e: Error) -> Self {
        BridgeError::Core(e)
    }
}

impl From<PyErr> for BridgeError {
    fn from(e: PyErr) -> Self {
        BridgeError::Python(e)
    }
}

impl From<pyo3::CastError<'_, '_>> for BridgeError {
    fn from(e: pyo3::CastError<'_, '_>) -> Self {
        BridgeError::Python(e.into())
    }
}

impl From<arrow_schema::ArrowError> for BridgeError {
    fn from(e: arrow_schema::ArrowError) -> Self {
        BridgeError::Core(Error::Arrow(e))
    }
}

impl From<BridgeError> for PyErr {
    fn from(e: BridgeError) -> PyErr {
        match e {
            BridgeError::Python(err) => err,
            BridgeError::Core(err) => {
                let (class, builtin) = classes(&err);
                raise(class, builtin, err.to_string())
            }
        }
    }
}

/// A built-in exception class (the fallback of an `arrowbridge.errors` class).
type Builtin = for<'py> fn(Python<'py>) -> Bound<'py, PyType>;

/// The class of `arrowbridge.errors` that reports `e`, and the built-in class it derives
/// from (see `arrowbridge/errors.py`; tests/test_extension_errors.py holds the two to it).
fn classes(e: &Error) -> (&'static str, Builtin) {
    match e {
        Error::Nulls { .. } => ("NullValuesError", PyValueError::type_object),
        Error::Misaligned { .. } => ("MisalignedBufferError", PyValueError::type_object),
        Error::ByteOrder { .. } => ("ByteOrderError", PyValueError::type_object),
        Error::UnsupportedType { .. } => ("UnsupportedTypeError", PyTypeError::type_object),
        Error::DType { .. } | Error::Mismatch { .. } => {
            ("DTypeMismatchError", PyTypeError::type_object)
        }
        Error::Shape { .. } => ("ShapeError", PyValueError::type_object),
        Error::UnknownKernel { .. } => ("UnknownKernelError", PyLookupError::type_object),
        Error::Param { .. } => ("KernelParameterError", PyTypeError::type_object),
        Error::CopyRequired { .. } => ("CopyRequiredError", PyValueError::type_object),
        Error::Kernel { .. } => ("KernelError", PyRuntimeError::type_object),
        Error::Io { .. } => ("FileError", PyOSError::type_object),
        Error::BadFile { .. } => ("InvalidFileError", PyValueError::type_object),
        Error::Plugin { .. } => ("PluginError", PyImportError::type_object),
        Error::InvalidData { .. } | Error::Arrow(_) => {
            ("InvalidArrowDataError", PyValueError::type_object)
        }
        Error::OutOfMemory { .. } => ("OutOfMemoryError", PyMemoryError::type_object),
        Error::Device { .. } => ("UnsupportedDeviceError", PyBufferError::type_object),
        Error::ReadOnly { .. } => ("ReadOnlyError", PyValueError::type_object),
        Error::AlreadyBorrowed { .. } => ("AlreadyBorrowedError", PyValueError::type_object),
        _ => ("ArrowBridgeError", PyException::type_object),
    }
}

/// The module `arrowbridge.errors`, imported once; `None` when the arrowbridge package is
/// not installed (or is made unimportable, as `sys.modules["arrowbridge"] = None` does).
/// Another failure of the import is not remembered: the next error tries again.
fn errors_module(py: Python<'_>) -> Option<&Bound<'_, PyModule>> {
    static ERRORS: PyOnceLock<Option<Py<PyModule>>> = PyOnceLock::new();
    let module = ERRORS.get_or_try_init(py, || match py.import("arrowbridge.errors") {
        Ok(module) => Ok(Some(module.unbind())),
        Err(e) if e.is_instance_of::<PyModuleNotFoundError>(py) => Ok(None),
        Err(e) => Err(e),
    });
    module.ok()?.as_ref().map(|m| m.bind(py))
}

/// Imports `arrowbridge.errors` now, if it is installed (see [`crate::prepare_for_fork`]).
pub(crate) fn prepare(py: Python<'_>) {
    errors_module(py);
}

/// An exception of class `class` of `arrowbridge.errors`, or of `builtin` when the package
/// (or the class) is missing, made with `args`.
fn raise<A>(class: &'static str, builtin: Builtin, args: A) -> PyErr
where
    A: PyErrArguments + Send + Sync + 'static,
{
    Python::attach(|py| {
        let class = errors_module(py)
            .and_then(|module| module.getattr(class).ok())
            .and_then(|class| class.cast_into::<PyType>().ok())
            .unwrap_or_else(|| builtin(py));
        PyErr::from_type(class, args)
    })
}

/// An exception of class `class` of `arrowbridge.errors` made with `args`, for the errors
/// of arrowbridge's bindings that are not an [`arrowbridge::Error`] (Flight's, say). `B` is
/// the built-in class that `class` derives from, raised when the arrowbridge package cannot
/// be imported.
pub fn python_error<B, A>(class: &'static str, args: A) -> PyErr
where
    B: PyTypeInfo,
    A: PyErrArguments + Send + Sync + 'static,
{
    raise(class, B::type_object, args)
}

/// Runs `f`, turning a Rust panic into an error (`arrowbridge.InvalidArrowDataError`, or
/// `ValueError` without arrowbridge) instead of letting PyO3 raise its `PanicException`,
/// which is not an `Exception`. `what` names the entry point in the message.
///
/// ```
/// use arrowbridge_pyo3::{no_panic, ArrayArg1, BridgeResult};
/// use pyo3::prelude::*;
///
/// /// The first element; a bug that panics raises an exception Python code can catch.
/// #[pyfunction]
/// fn first(x: ArrayArg1<'_, f64>) -> BridgeResult<f64> {
///     no_panic("first", || Ok(x.as_array()[0]))
/// }
///
/// let error = no_panic("first", || -> BridgeResult<f64> { panic!("index out of bounds") });
/// assert!(error.unwrap_err().to_string().contains("index out of bounds"));
/// ```
pub fn no_panic<T>(what: &str, f: impl FnOnce() -> BridgeResult<T>) -> BridgeResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message = arrowbridge::panic_message(panic.as_ref());
        Err(Error::invalid(
            what,
            format!("internal error (a Rust panic, please report it): {message}"),
        )
        .into())
    })
}
