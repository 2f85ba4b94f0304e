//! The one error type of arrowbridge.

use arrow_schema::ArrowError;

/// Everything that can go wrong while exchanging or computing on arrays.
///
/// Each variant names the field, dtype, offset or kernel involved so that the message alone
/// tells a user what to change. The Python bindings map every variant onto one exception class
/// of the `arrowbridge.ArrowBridgeError` hierarchy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Arrow data has null values; an `ndarray` view has no place for them.
    #[error("{what} has {count} null value(s); arrowbridge arrays cannot hold nulls (fill or drop them first)")]
    Nulls { what: String, count: usize },

    /// A buffer's address is not a multiple of its element's alignment.
    #[error("{what}: data buffer at address {address:#x} is not aligned to {align} bytes (off by {misalignment}); copy it into an aligned buffer first")]
    Misaligned {
        what: String,
        address: usize,
        align: usize,
        misalignment: usize,
    },

    /// The array's bytes are not in this machine's byte order.
    #[error("{what}: dtype {dtype} is not in native byte order; convert it first, e.g. x.astype(x.dtype.newbyteorder('='))")]
    ByteOrder { what: String, dtype: String },

    /// A dtype or Arrow type that arrowbridge does not carry.
    #[error("{what}: unsupported {kind} {name}")]
    UnsupportedType {
        what: String,
        kind: &'static str,
        name: String,
    },

    /// A kernel received an argument of the wrong dtype.
    #[error("kernel {kernel:?}: argument {arg} has dtype {got}, expected {expected}")]
    DType {
        kernel: String,
        arg: usize,
        expected: String,
        got: String,
    },

    /// A kernel received an argument of the wrong rank or shape.
    #[error("{context}: {message}")]
    Shape { context: String, message: String },

    /// No kernel of that name is registered.
    #[error("unknown kernel {name:?}; registered kernels: {available}")]
    UnknownKernel { name: String, available: String },

    /// A kernel parameter is missing, unknown or of the wrong type.
    #[error("kernel {kernel:?}: parameter {name:?}: {message}")]
    Param {
        kernel: String,
        name: String,
        message: String,
    },

    /// The caller forbade a copy (`copy=False`) that the layout needs.
    #[error("{what}: {reason}; a copy is required but copy=False was given")]
    CopyRequired { what: String, reason: String },

    /// Arrow data or metadata that does not describe a valid array.
    #[error("{what}: {message}")]
    InvalidData { what: String, message: String },

    /// A kernel failed, or panicked.
    #[error("kernel {kernel:?} failed: {message}")]
    Kernel { kernel: String, message: String },

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// An Arrow IPC file or stream that cannot be read.
    #[error("{path}: {message}")]
    BadFile { path: String, message: String },

    /// A kernel plugin could not be loaded.
    #[error("kernel plugin {path}: {message}")]
    Plugin { path: String, message: String },

    /// An allocation of a computed size that this process cannot make (NumPy's
    /// `MemoryError`): a kernel's result, or a buffer an IPC message declares.
    #[error("{what}: cannot allocate {bytes} bytes: {reason}")]
    OutOfMemory {
        what: String,
        bytes: u64,
        reason: String,
    },

    /// An error reported by the Arrow libraries.
    #[error(transparent)]
    Arrow(#[from] ArrowError),
}

/// `Result` with [`Error`] as the error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::InvalidData`] with the given context and message.
    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidData {
            what: what.into(),
            message: message.into(),
        }
    }

    /// An [`Error::Shape`] with the given context and message.
    pub fn shape(context: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Shape {
            context: context.into(),
            message: message.into(),
        }
    }

    /// An [`Error::Kernel`] raised by a kernel's own checks.
    pub fn kernel(kernel: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Kernel {
            kernel: kernel.into(),
            message: message.into(),
        }
    }
}

/// The message of a caught panic's payload (`&str` or `String`, as `panic!` makes them).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into())
}
