//! What arrowbridge's own bindings (`arrowbridge._native`, the crate `arrowbridge-py`)
//! share with the argument types of this crate: conversions between Python objects and
//! [`arrowbridge::ArrowTensor`]s. Not part of this crate's API: hidden from its
//! documentation, and free to change in any release.

pub mod arrow_memory;
pub mod capsule;
pub mod dlpack;
pub mod input;
pub mod numpy_input;
pub mod numpy_output;
pub mod ragged;

pub use crate::errors::python_error;
