//! arrowbridge: n-dimensional arrays in Apache Arrow memory, seen as `ndarray` views.
//!
//! * [`ArrowTensor`] pairs Arrow data (a primitive array, or the canonical
//!   `arrow.fixed_shape_tensor` extension type) with its logical shape and axis order, and
//!   hands out [`ndarray::ArrayView`]s over the same memory — no copies either way.
//! * [`RaggedTensor`] holds tensors of one dtype and rank but different shapes as the
//!   canonical `arrow.variable_shape_tensor`, each row an `ndarray` view of the Arrow memory.
//! * [`DType`] lists the element types and their Arrow encodings.
//! * [`Registry`] holds kernels — Rust functions over views — callable by name from Python,
//!   IPC tools and the Flight server alike.
//!
//! * [`ipc`] writes named tensors to Arrow IPC files and streams and reads them back as views
//!   of a memory mapping.
//! * [`landing`] receives a stream of record batches straight into one contiguous buffer per
//!   column, as the Flight client and server do.
//!
//! This crate has no Python in it.
//!
//! ```
//! use arrowbridge::{ipc, ArrowTensor, Params, Registry};
//! use ndarray::{ArrayD, IxDyn};
//!
//! // An ndarray moved into Arrow memory (no copy), and an ndarray view of it.
//! let x = ArrowTensor::from_array(ArrayD::from_shape_fn(IxDyn(&[3, 4]), |i| (i[0] * 4 + i[1]) as f32));
//! assert_eq!(x.field("x").extension_type_name(), Some("arrow.fixed_shape_tensor"));
//! assert_eq!(x.view::<f32>()?[[2, 3]], 11.0);
//!
//! // A kernel by name, as Python, IPC tools and the Flight server call it.
//! let sums = Registry::with_builtins().call("sum", &[x.clone()], Params::default())?;
//! assert_eq!(sums[0].view::<f32>()?[[]], 66.0); // float32 sums stay float32, as in NumPy
//!
//! // An IPC file, read back as a view of its memory mapping.
//! let path = std::env::temp_dir().join(format!("arrowbridge-doc-{}.arrow", std::process::id()));
//! ipc::write_ipc(&path, &[("x", &x)], &ipc::WriteOptions::default())?;
//! let mapped = ipc::read_ipc(&path, true)?.tensor("x")?;
//! assert_eq!(mapped.view::<f32>()?, x.view::<f32>()?);
//! std::fs::remove_file(&path).ok();
//! # Ok::<(), arrowbridge::Error>(())
//! ```

#![warn(missing_docs)]

pub mod dlpack;
mod dtype;
mod error;
pub mod ffi;
pub mod ipc;
pub mod kernels;
pub mod landing;
mod layout;
pub mod memory;
mod ragged;
mod tensor;
mod view;

pub use dtype::{DType, Element, ALL_DTYPES};
pub use error::{panic_message, Error, Result};
pub use kernels::{Combine, Distribution, Kernel, KernelFn, Param, Params, Registry};
pub use layout::{block_order, Dims};
pub use ragged::{
    is_ragged_field, RaggedMetadata, RaggedTensor, COMPLEX_RAGGED_EXTENSION, RAGGED_EXTENSION,
};
pub use tensor::{
    ArrowTensor, Form, TensorMetadata, BOOL8_EXTENSION, COMPLEX_EXTENSION, EXTENSION_METADATA_KEY,
    EXTENSION_NAME_KEY, TENSOR_EXTENSION,
};
pub use view::DynView;

/// The error of the Arrow libraries, which [`Error::Arrow`] carries.
pub use arrow_schema::ArrowError;
pub use arrow_schema::TimeUnit;
