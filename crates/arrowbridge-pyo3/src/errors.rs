//! Maps [`arrowbridge::Error`] onto the exception classes of `arrowbridge.errors`.

use arrowbridge::Error;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// An error on its way to Python: one of ours, or one Python already raised.
pub enum BridgeError {
    Core(Error),
    Python(PyErr),
}

/// `Result` of the binding layer.
pub type BridgeResult<T> = Result<T, BridgeError>;

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

/// The name of the `arrowbridge.errors` class that reports `e`.
fn class_name(e: &Error) -> &'static str {
    match e {
        Error::Nulls { .. } => "NullValuesError",
        Error::Misaligned { .. } => "MisalignedBufferError",
        Error::ByteOrder { .. } => "ByteOrderError",
        Error::UnsupportedType { .. } => "UnsupportedTypeError",
        Error::DType { .. } | Error::Mismatch { .. } => "DTypeMismatchError",
        Error::Shape { .. } => "ShapeError",
        Error::UnknownKernel { .. } => "UnknownKernelError",
        Error::Param { .. } => "KernelParameterError",
        Error::CopyRequired { .. } => "CopyRequiredError",
        Error::Kernel { .. } => "KernelError",
        Error::Io { .. } => "FileError",
        Error::BadFile { .. } => "InvalidFileError",
        Error::Plugin { .. } => "PluginError",
        Error::InvalidData { .. } | Error::Arrow(_) => "InvalidArrowDataError",
        Error::OutOfMemory { .. } => "OutOfMemoryError",
        Error::Device { .. } => "UnsupportedDeviceError",
        Error::ReadOnly { .. } => "ReadOnlyError",
        Error::AlreadyBorrowed { .. } => "AlreadyBorrowedError",
        _ => "ArrowBridgeError",
    }
}

impl From<BridgeError> for PyErr {
    fn from(e: BridgeError) -> PyErr {
        match e {
            BridgeError::Python(err) => err,
            BridgeError::Core(err) => python_error(class_name(&err), err.to_string()),
        }
    }
}

/// An exception of class `name` of `arrowbridge.errors`, made with `args`.
pub fn python_error<A>(name: &str, args: A) -> PyErr
where
    A: pyo3::PyErrArguments + Send + Sync + 'static,
{
    Python::attach(|py| {
        static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
        let class = ERRORS
            .get_or_try_init(py, || py.import("arrowbridge.errors").map(Bound::unbind))
            .and_then(|module| module.bind(py).getattr(name))
            .and_then(|class| class.cast_into::<PyType>().map_err(PyErr::from));
        match class {
            Ok(class) => PyErr::from_type(class, args),
            Err(import_error) => import_error,
        }
    })
}

/// Runs `f`, turning a Rust panic into an `ArrowBridgeError` instead of letting PyO3 raise
/// its `PanicException` (which is not an `Exception`). `what` names the entry point.
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
