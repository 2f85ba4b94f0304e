//! arrowbridge: n-dimensional arrays in Apache Arrow memory, seen as `ndarray` views.
//!
//! * [`ArrowTensor`] pairs Arrow data (a primitive array, or the canonical
//!   `arrow.fixed_shape_tensor` extension type) with its logical shape and axis order, and
//!   hands out [`ndarray::ArrayView`]s over the same memory — no copies either way.
//! * [`DType`] lists the element types and their Arrow encodings.
//! * [`Registry`] holds kernels — Rust functions over views — callable by name from Python,
//!   IPC tools and the Flight server alike.
//!
//! * [`ipc`] writes named tensors to Arrow IPC files and streams and reads them back as views
//!   of a memory mapping.
//!
//! This crate has no Python in it.

mod dtype;
mod error;
pub mod ipc;
pub mod kernels;
mod layout;
mod tensor;
mod view;

pub use dtype::{DType, Element, ALL_DTYPES};
pub use error::{panic_message, Error, Result};
pub use kernels::{Kernel, KernelFn, Param, Params, Registry};
pub use layout::{block_order, Dims};
pub use tensor::{
    ArrowTensor, Form, TensorMetadata, BOOL8_EXTENSION, COMPLEX_EXTENSION, EXTENSION_METADATA_KEY,
    EXTENSION_NAME_KEY, TENSOR_EXTENSION,
};
pub use view::DynView;

pub use arrow_schema::TimeUnit;
