//! Kernels compiled into a shared library of their own and loaded at run time.
//!
//! A plugin is a `cdylib` crate that depends on `arrowbridge`, writes kernels exactly as the
//! built-in ones are written, and exports them with [`export_kernels!`](crate::export_kernels):
//!
//! ```
//! use arrowbridge::{ArrowTensor, Kernel, Params, Result};
//!
//! fn double(args: &[ArrowTensor], _: &Params) -> Result<Vec<ArrowTensor>> {
//!     let x = args[0].view::<f64>()?;
//!     Ok(vec![ArrowTensor::from_array(x.mapv(|v| 2.0 * v))])
//! }
//!
//! fn kernels() -> Vec<Kernel> {
//!     vec![Kernel::new("double", "double(x: float64[...]) -> float64[...]", double).arity(1)]
//! }
//!
//! arrowbridge::export_kernels!(kernels);
//! ```
//!
//! Build it (`crate-type = ["cdylib"]`, `cargo build --release`) and load the library where the
//! kernels are wanted: [`Registry::load_plugin`](crate::Registry::load_plugin) in Rust,
//! `arrowbridge.load_kernels(path)` in Python (for `call` and for servers started afterwards),
//! `arrowbridge serve --kernels PATH` for the Flight server, `arrowbridge run --kernels PATH`
//! for IPC files.
//!
//! The library boundary is a small C ABI of its own ([`abi`], version [`ABI_VERSION`]), so
//! that a plugin may be built with another Rust compiler or another arrowbridge release of the
//! same ABI than its host:
//!
//! * A plugin exports one symbol, `arrowbridge_plugin`, returning a versioned struct of entry
//!   points ([`AbiPlugin`]); the host refuses a library built for another ABI version, naming
//!   both versions.
//! * Arrays cross as [`AbiTensor`] descriptors (address, size, shape, axis order, dtype code,
//!   and an owner with its release function), in both directions and without copies: a kernel
//!   in a plugin sees the caller's memory, and the caller sees the memory the kernel allocated,
//!   released by the plugin when the last user drops it (a loaded library is never unloaded).
//!   A kernel may return a view of its input, as the example plugin's `head` does.
//! * Parameters cross as plain values ([`AbiParam`]); kernels are called by their number in
//!   the kernel list, which is JSON and read once, at load.
//! * Errors cross as JSON keeping their kind, and a panic in a plugin kernel is caught inside
//!   the plugin and comes back as [`Error::Kernel`](crate::Error::Kernel).
//!
//! The code is split by role: [`abi`] (the structs and the conversions both sides share),
//! `host` (loading and calling) and [`guest`] (what `export_kernels!` compiles into a plugin).

pub mod abi;
#[doc(hidden)]
pub mod guest;
mod host;

pub use abi::{AbiParam, AbiPlugin, AbiTensor, ABI_VERSION};
pub use host::plugin_kernels;

/// Exports kernels from a `cdylib` crate as an arrowbridge plugin (see [the module
/// docs](crate::kernels::plugin)). The argument is a function returning `Vec<Kernel>`.
#[macro_export]
macro_rules! export_kernels {
    ($kernels:path) => {
        fn __arrowbridge_plugin_registry(
        ) -> &'static ::std::result::Result<$crate::Registry, ::std::string::String> {
            static REGISTRY: ::std::sync::OnceLock<
                ::std::result::Result<$crate::Registry, ::std::string::String>,
            > = ::std::sync::OnceLock::new();
            REGISTRY.get_or_init(|| {
                ::std::panic::catch_unwind($kernels)
                    .map_err(|p| $crate::panic_message(p.as_ref()))
                    .and_then($crate::kernels::plugin::guest::registry_of)
            })
        }

        /// The plugin's entry points (arrowbridge plugin ABI, see `AbiPlugin`).
        #[unsafe(no_mangle)]
        pub extern "C" fn arrowbridge_plugin() -> *const $crate::kernels::plugin::AbiPlugin {
            extern "C" fn kernels() -> *mut ::std::ffi::c_char {
                $crate::kernels::plugin::guest::kernels(__arrowbridge_plugin_registry())
            }
            unsafe extern "C" fn call(
                kernel: usize,
                inputs: *const $crate::kernels::plugin::AbiTensor,
                n_inputs: usize,
                params: *const $crate::kernels::plugin::AbiParam,
                n_params: usize,
                emit: $crate::kernels::plugin::abi::EmitFn,
                ctx: *mut ::std::ffi::c_void,
            ) -> *mut ::std::ffi::c_char {
                // SAFETY: the host calls with arguments as `CallFn` describes.
                unsafe {
                    $crate::kernels::plugin::guest::call(
                        __arrowbridge_plugin_registry(),
                        kernel,
                        inputs,
                        n_inputs,
                        params,
                        n_params,
                        emit,
                        ctx,
                    )
                }
            }
            unsafe extern "C" fn free(text: *mut ::std::ffi::c_char) {
                // SAFETY: the host frees each string this plugin returned once.
                unsafe { $crate::kernels::plugin::abi::free_string(text) }
            }
            static PLUGIN: $crate::kernels::plugin::AbiPlugin =
                $crate::kernels::plugin::AbiPlugin {
                    abi_version: $crate::kernels::plugin::ABI_VERSION,
                    size: ::std::mem::size_of::<$crate::kernels::plugin::AbiPlugin>() as u32,
                    kernels,
                    call,
                    free,
                };
            &PLUGIN
        }
    };
}
