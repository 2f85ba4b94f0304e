//! arrowbridge for PyO3 extension authors: arguments that take NumPy arrays, Arrow
//! producers and DLPack producers alike as `ndarray` views, and results that go back to
//! Python as NumPy arrays, without copies.
//!
//! The bindings of arrowbridge itself (`arrowbridge._native`) are built on this crate, so
//! an extension's arguments are checked as arrowbridge's own are, and a bad one raises the
//! same exception of `arrowbridge.errors`.

pub mod alloc;
pub mod arg;
pub mod arrow_memory;
pub mod capsule;
pub mod dlpack;
pub mod errors;
pub mod input;
pub mod numpy_input;
pub mod numpy_output;
pub mod recycle;

pub use alloc::Aligned64;
pub use arg::{
    ArgElement, ArrayArg, ArrayArg1, ArrayArg2, ArrayArgDyn, ArrayArgMut, ArrayArgMut1,
    ArrayArgMut2, ArrayArgMutDyn, ArrayOut,
};
pub use errors::{no_panic, BridgeError, BridgeResult};
pub use recycle::Recycling;
