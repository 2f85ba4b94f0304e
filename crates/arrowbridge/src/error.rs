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
    Nulls {
        /// The array, field or column that has them.
        what: String,
        /// How many.
        count: usize,
    },

    /// A buffer's address is not a multiple of its element's alignment.
    #[error("{what}: data buffer at address {address:#x} is not aligned to {align} bytes (off by {misalignment}); copy it into an aligned buffer first")]
    Misaligned {
        /// The array or field.
        what: String,
        /// The buffer's address.
        address: usize,
        /// The alignment its dtype needs, in bytes.
        align: usize,
        /// `address % align`.
        misalignment: usize,
    },

    /// The array's bytes are not in this machine's byte order.
    #[error("{what}: dtype {dtype} is not in native byte order; convert it first, e.g. x.astype(x.dtype.newbyteorder('='))")]
    ByteOrder {
        /// The array, field or file.
        what: String,
        /// The dtype (or the data) that is in the other byte order.
        dtype: String,
    },

    /// A dtype or Arrow type that arrowbridge does not carry.
    #[error("{what}: unsupported {kind} {name}")]
    UnsupportedType {
        /// The array, field or input.
        what: String,
        /// What kind of type: "dtype", "Arrow type", "extension type", "object type", ...
        kind: &'static str,
        /// The type's name.
        name: String,
    },

    /// The data lives where the CPU cannot read it (a GPU, another device).
    #[error("{what}: its data lives on device {device}; arrowbridge reads CPU memory only (move it to the CPU first, e.g. jax.device_put(x, jax.devices(\"cpu\")[0]) or x.cpu())")]
    Device {
        /// The array or input.
        what: String,
        /// The device, as the array libraries name it (`cuda:0`).
        device: String,
    },

    /// A writable view was asked of memory that is read-only.
    #[error("{what} is read-only; a mutable view needs a writable NumPy array")]
    ReadOnly {
        /// The array or argument.
        what: String,
    },

    /// Memory already borrowed mutably (or, for a mutable borrow, at all) by another view.
    #[error("{what} is already borrowed by another view of the same memory ({how})")]
    AlreadyBorrowed {
        /// The array or argument.
        what: String,
        /// Which rule the borrow breaks.
        how: &'static str,
    },

    /// A kernel received an argument of the wrong dtype.
    #[error("kernel {kernel:?}: argument {arg} has dtype {got}, expected {expected}")]
    DType {
        /// The kernel (or "view").
        kernel: String,
        /// The argument's position.
        arg: usize,
        /// The dtypes the kernel accepts there.
        expected: String,
        /// The dtype it was given.
        got: String,
    },

    /// An array has another dtype than the one it is read as.
    #[error("{what} has dtype {got}, expected {expected}")]
    Mismatch {
        /// The array or argument.
        what: String,
        /// The dtype it is read as.
        expected: String,
        /// The dtype it has.
        got: String,
    },

    /// A kernel received an argument of the wrong rank or shape.
    #[error("{context}: {message}")]
    Shape {
        /// Where: a kernel, an argument, an operation.
        context: String,
        /// What does not fit.
        message: String,
    },

    /// No kernel of that name is registered.
    #[error("unknown kernel {name:?}; registered kernels: {available}")]
    UnknownKernel {
        /// The name asked for.
        name: String,
        /// The registered kernels, comma-separated.
        available: String,
    },

    /// A kernel parameter is missing, unknown or of the wrong type.
    #[error("kernel {kernel:?}: parameter {name:?}: {message}")]
    Param {
        /// The kernel.
        kernel: String,
        /// The parameter.
        name: String,
        /// What is wrong with it.
        message: String,
    },

    /// The caller forbade a copy (`copy=False`) that the layout needs.
    #[error("{what}: {reason}; a copy is required but copy=False was given")]
    CopyRequired {
        /// The array.
        what: String,
        /// Why a view cannot be had.
        reason: String,
    },

    /// Arrow data or metadata that does not describe a valid array.
    #[error("{what}: {message}")]
    InvalidData {
        /// The array, field or metadata.
        what: String,
        /// What is inconsistent.
        message: String,
    },

    /// A kernel failed, or panicked.
    #[error("kernel {kernel:?} failed: {message}")]
    Kernel {
        /// The kernel.
        kernel: String,
        /// What failed (or the panic's message).
        message: String,
    },

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// An Arrow IPC file or stream that cannot be read.
    #[error("{path}: {message}")]
    BadFile {
        /// The file (or the Flight call whose messages were read).
        path: String,
        /// What is wrong with it.
        message: String,
    },

    /// A kernel plugin could not be loaded.
    #[error("kernel plugin {path}: {message}")]
    Plugin {
        /// The library.
        path: String,
        /// Why it cannot be loaded.
        message: String,
    },

    /// An allocation of a computed size that this process cannot make (NumPy's
    /// `MemoryError`): a kernel's result, or a buffer an IPC message declares.
    #[error("{what}: cannot allocate {bytes} bytes: {reason}")]
    OutOfMemory {
        /// What needed the memory.
        what: String,
        /// How many bytes.
        bytes: u64,
        /// Why they cannot be had: the limit, or the allocator's refusal.
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
