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
//! kernels are wanted: [`Registry::load_plugin`] in Rust, `arrowbridge.load_kernels(path)` in
//! Python (for `call` and for servers started afterwards), `arrowbridge serve --kernels PATH`
//! for the Flight server, `arrowbridge run --kernels PATH` for IPC files.
//!
//! Arrays cross the library boundary through the
//! [Arrow C Data Interface](https://arrow.apache.org/docs/format/CDataInterface.html), the one
//! ABI both sides agree on: a plugin may be built with another Rust compiler or another
//! arrow-rs version than its host. Inputs and outputs are handed over, not copied — a kernel
//! in a plugin sees the caller's memory, and the caller sees the memory the kernel allocated
//! (it is released by the plugin when the last user drops it; a loaded library is never
//! unloaded). Names, signatures, parameters and errors travel as JSON, and a panic in a plugin
//! kernel is caught inside the plugin and comes back as [`Error::Kernel`].
//!
//! The exported C symbols (ABI version 1) are
//! `arrowbridge_plugin_v1_kernels() -> char*` (JSON description of the kernels),
//! `arrowbridge_plugin_v1_call(request, n, arrays, schemas, emit, ctx) -> char*` (`NULL`, or a
//! JSON error) and `arrowbridge_plugin_v1_free(char*)`.

use std::collections::BTreeSet;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

pub use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::make_array;
use arrow_schema::Field;
use serde_json::{json, Value};

use super::{Distribution, Kernel, Params, Registry};
use crate::error::{panic_message, Error, Result};
use crate::ipc::{column_field, column_tensor};
use crate::tensor::ArrowTensor;

/// `arrowbridge_plugin_v1_kernels`: the JSON description of the plugin's kernels.
pub type KernelsFn = unsafe extern "C" fn() -> *mut c_char;
/// Receives one output of a call; returns 0 when it took the output. `emit` and its `ctx` are
/// valid only until the call they were passed to returns.
pub type EmitFn = unsafe extern "C" fn(
    ctx: *mut c_void,
    array: *mut FFI_ArrowArray,
    schema: *mut FFI_ArrowSchema,
) -> c_int;
/// `arrowbridge_plugin_v1_call`: runs one kernel; `NULL` on success, else a JSON error.
pub type CallFn = unsafe extern "C" fn(
    request: *const c_char,
    n: usize,
    arrays: *mut FFI_ArrowArray,
    schemas: *const FFI_ArrowSchema,
    emit: EmitFn,
    ctx: *mut c_void,
) -> *mut c_char;
/// `arrowbridge_plugin_v1_free`: releases a string the plugin returned.
pub type FreeFn = unsafe extern "C" fn(*mut c_char);

/// The three entry points of a plugin.
#[derive(Clone, Copy, Debug)]
pub struct PluginApi {
    /// Lists the plugin's kernels (JSON).
    pub kernels: KernelsFn,
    /// Runs one kernel on arrays passed through the C Data Interface.
    pub call: CallFn,
    /// Frees a string the plugin returned.
    pub free: FreeFn,
}

fn plugin_error(path: &str, message: impl Into<String>) -> Error {
    Error::Plugin {
        path: path.to_string(),
        message: message.into(),
    }
}

impl Registry {
    /// Loads the shared library at `path` (made with [`export_kernels!`](crate::export_kernels))
    /// and registers its kernels; returns their names. A name that is already registered is an
    /// error and registers nothing.
    pub fn load_plugin(&mut self, path: &Path) -> Result<Vec<&'static str>> {
        let what = path.display().to_string();
        // dlopen searches the system's library path for a bare file name; a user means the file.
        let local;
        let path = if path.is_relative() && path.components().count() == 1 {
            local = Path::new(".").join(path);
            local.as_path()
        } else {
            path
        };
        // SAFETY: loading a library runs its initializers; loading one is what the caller asked
        // for.
        let library = unsafe { libloading::Library::new(path) }
            .map_err(|e| plugin_error(&what, format!("cannot load the library: {e}")))?;
        let symbol = |name: &str| {
            // SAFETY: the symbol is read as a plain address; its type is checked by the ABI
            // version in its name.
            unsafe { library.get::<*const c_void>(name.as_bytes()) }
                .map(|s| *s)
                .map_err(|e| {
                    plugin_error(
                        &what,
                        format!("not an arrowbridge plugin (ABI v1): {name} is missing: {e}"),
                    )
                })
        };
        // SAFETY: the v1 symbols have exactly these signatures (see `export_kernels!`).
        let api = unsafe {
            PluginApi {
                kernels: std::mem::transmute::<*const c_void, KernelsFn>(symbol(
                    "arrowbridge_plugin_v1_kernels",
                )?),
                call: std::mem::transmute::<*const c_void, CallFn>(symbol(
                    "arrowbridge_plugin_v1_call",
                )?),
                free: std::mem::transmute::<*const c_void, FreeFn>(symbol(
                    "arrowbridge_plugin_v1_free",
                )?),
            }
        };
        // A plugin is never unloaded: arrays it allocated may outlive any handle to it.
        std::mem::forget(library);
        // SAFETY: `api` comes from a library that stays loaded for the life of the process.
        let kernels = unsafe { plugin_kernels(&what, api) }?;
        let mut seen = BTreeSet::new();
        if let Some(taken) = kernels
            .iter()
            .find(|k| self.contains(k.name) || !seen.insert(k.name))
        {
            return Err(plugin_error(
                &what,
                format!("kernel {:?} is already registered", taken.name),
            ));
        }
        let names = kernels.iter().map(|k| k.name).collect();
        for kernel in kernels {
            self.register(kernel)?;
        }
        Ok(names)
    }
}

/// The kernels a plugin offers, as [`Kernel`]s that call into it.
///
/// # Safety
/// `api` must be the entry points of an arrowbridge plugin that stays loaded for as long as
/// the kernels or any array they return live (usually: forever).
pub unsafe fn plugin_kernels(what: &str, api: PluginApi) -> Result<Vec<Kernel>> {
    // SAFETY: per this function's contract.
    let text = unsafe { take_string(api, (api.kernels)()) }
        .ok_or_else(|| plugin_error(what, "the plugin returned no kernel list"))?;
    let description: Value = serde_json::from_str(&text)
        .map_err(|e| plugin_error(what, format!("bad kernel list: {e}")))?;
    if let Some(error) = description.get("error").and_then(Value::as_str) {
        return Err(plugin_error(what, error));
    }
    if description.get("abi").and_then(Value::as_u64) != Some(1) {
        return Err(plugin_error(
            what,
            format!(
                "plugin ABI {} (this arrowbridge speaks 1)",
                description["abi"]
            ),
        ));
    }
    let list = description
        .get("kernels")
        .and_then(Value::as_array)
        .ok_or_else(|| plugin_error(what, "bad kernel list: no \"kernels\" array"))?;
    list.iter()
        .map(|entry| {
            let text = |key: &str| {
                entry.get(key).and_then(Value::as_str).ok_or_else(|| {
                    plugin_error(what, format!("bad kernel list: an entry has no {key:?}"))
                })
            };
            let name = intern(text("name")?);
            let params: Vec<&'static str> = entry
                .get("params")
                .and_then(Value::as_array)
                .map(|ps| ps.iter().filter_map(Value::as_str).map(intern).collect())
                .unwrap_or_default();
            let arity = entry
                .get("arity")
                .and_then(Value::as_u64)
                .map(|n| n as usize);
            // Plugins built before distributions existed declare none: they run in one place.
            let distribution = match entry.get("distribution") {
                None => Distribution::Local,
                Some(value) => Distribution::from_json(value, intern).ok_or_else(|| {
                    plugin_error(
                        what,
                        format!("kernel {name:?} declares an unknown distribution {value}"),
                    )
                })?,
            };
            Ok(Kernel {
                name,
                signature: intern(text("signature")?),
                params: intern_list(params),
                arity,
                distribution,
                constant_time: false,
                func: Arc::new(move |args: &[ArrowTensor], params: &Params| {
                    // SAFETY: per this function's contract.
                    unsafe { call_plugin(api, name, args, params) }
                }),
            })
        })
        .collect()
}

/// Names and signatures of loaded kernels live as long as the process (a [`Kernel`] holds
/// `&'static str`s, like the built-ins' literals); each distinct string is stored once, however
/// often a plugin is loaded.
fn intern(text: &str) -> &'static str {
    static STRINGS: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut strings = STRINGS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&known) = strings.get(text) {
        return known;
    }
    let text: &'static str = Box::leak(text.to_owned().into_boxed_str());
    strings.insert(text);
    text
}

/// [`intern`] for a kernel's list of parameter names.
fn intern_list(list: Vec<&'static str>) -> &'static [&'static str] {
    static LISTS: Mutex<BTreeSet<&'static [&'static str]>> = Mutex::new(BTreeSet::new());
    let mut lists = LISTS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&known) = lists.get(list.as_slice()) {
        return known;
    }
    let list: &'static [&'static str] = Box::leak(list.into_boxed_slice());
    lists.insert(list);
    list
}

/// Reads and frees a string returned by the plugin.
///
/// # Safety
/// `ptr` is null or a string that `api`'s plugin returned and has not been freed; it is freed
/// here (by the plugin's own `free`) and must not be used again.
unsafe fn take_string(api: PluginApi, ptr: *mut c_char) -> Option<String> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: the plugin returns NUL-terminated strings it made with `CString::into_raw`.
    let text = unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: the string came from this plugin and is released once.
    unsafe { (api.free)(ptr) };
    Some(text)
}

/// Exports `tensor` as a C Data Interface array and schema (no copy).
fn export(tensor: &ArrowTensor, name: &str) -> Result<(FFI_ArrowArray, FFI_ArrowSchema)> {
    let schema = FFI_ArrowSchema::try_from(&column_field(name, tensor))?;
    Ok((FFI_ArrowArray::new(&tensor.data()), schema))
}

/// Imports a C Data Interface array and schema as a tensor, taking ownership of the array.
///
/// # Safety
/// `array` and `schema` must point to valid C Data Interface structs.
unsafe fn import(
    array: *mut FFI_ArrowArray,
    schema: *const FFI_ArrowSchema,
) -> Result<ArrowTensor> {
    // SAFETY: per this function's contract; the array is moved out and its slot left released.
    let (array, schema) = unsafe { (std::ptr::replace(array, FFI_ArrowArray::empty()), &*schema) };
    let field = Field::try_from(schema)?;
    let mut array = array;
    // SAFETY: `array` and `schema` describe the same data (the exporter's contract); the
    // import checks its buffer and child counts against the type first.
    let data = unsafe { crate::ffi::import_array(&mut array, schema, &field, true) }?;
    column_tensor(&field, make_array(data).as_ref())
}

/// The host's side of a call: exports `args`, runs the kernel in the plugin, imports outputs.
///
/// # Safety
/// `api` holds the entry points of a loaded plugin whose ABI version was checked, and the
/// library stays loaded for as long as the outputs (whose memory it may own) live.
unsafe fn call_plugin(
    api: PluginApi,
    name: &'static str,
    args: &[ArrowTensor],
    params: &Params,
) -> Result<Vec<ArrowTensor>> {
    let request = json!({"kernel": name, "params": params.to_json()}).to_string();
    let request = CString::new(request).expect("JSON has no NUL bytes");
    let (mut arrays, schemas): (Vec<_>, Vec<_>) = args
        .iter()
        .enumerate()
        .map(|(i, t)| export(t, &format!("arg{i}")))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    let mut outputs: Vec<Result<ArrowTensor>> = Vec::new();
    // SAFETY: the arrays and schemas are valid for the call; the plugin moves the arrays out.
    let error = unsafe {
        (api.call)(
            request.as_ptr(),
            arrays.len(),
            arrays.as_mut_ptr(),
            schemas.as_ptr(),
            receive_output,
            (&mut outputs as *mut Vec<Result<ArrowTensor>>).cast(),
        )
    };
    // SAFETY: the string, if any, came from this plugin.
    if let Some(text) = unsafe { take_string(api, error) } {
        return Err(error_from_json(name, &text));
    }
    outputs.into_iter().collect()
}

/// The `emit` callback the host gives the plugin: imports one output into `ctx`.
unsafe extern "C" fn receive_output(
    ctx: *mut c_void,
    array: *mut FFI_ArrowArray,
    schema: *mut FFI_ArrowSchema,
) -> c_int {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the `Vec` `call_plugin` passed; array and schema are the plugin's
        // valid exports, of which the host takes the array (the plugin keeps the schema).
        let outputs = unsafe { &mut *ctx.cast::<Vec<Result<ArrowTensor>>>() };
        // SAFETY: `array` and `schema` are the plugin's valid exports of one output.
        outputs.push(unsafe { import(array, schema) });
        0
    }))
    .unwrap_or(1)
}

/// An error as JSON, keeping the variants a caller tells apart.
fn error_to_json(error: &Error) -> Value {
    match error {
        Error::DType {
            kernel,
            arg,
            expected,
            got,
        } => {
            json!({"kind": "dtype", "kernel": kernel, "arg": arg, "expected": expected, "got": got})
        }
        Error::Param {
            kernel,
            name,
            message,
        } => json!({"kind": "param", "kernel": kernel, "name": name, "message": message}),
        Error::Shape { context, message } => {
            json!({"kind": "shape", "context": context, "message": message})
        }
        Error::Kernel { kernel, message } => {
            json!({"kind": "kernel", "kernel": kernel, "message": message})
        }
        Error::UnknownKernel { name, available } => {
            json!({"kind": "unknown_kernel", "name": name, "available": available})
        }
        Error::Nulls { what, count } => json!({"kind": "nulls", "what": what, "count": count}),
        Error::UnsupportedType { what, kind, name } => {
            json!({"kind": "unsupported", "what": what, "type_kind": kind, "name": name})
        }
        Error::CopyRequired { what, reason } => {
            json!({"kind": "copy_required", "what": what, "reason": reason})
        }
        Error::Misaligned {
            what,
            address,
            align,
            misalignment,
        } => json!({"kind": "misaligned", "what": what, "address": address, "align": align,
                    "misalignment": misalignment}),
        Error::ByteOrder { what, dtype } => {
            json!({"kind": "byte_order", "what": what, "dtype": dtype})
        }
        Error::OutOfMemory {
            what,
            bytes,
            reason,
        } => json!({"kind": "out_of_memory", "what": what, "bytes": bytes, "reason": reason}),
        other => json!({"kind": "invalid", "message": other.to_string()}),
    }
}

fn error_from_json(kernel: &str, text: &str) -> Error {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return Error::kernel(kernel, text);
    };
    let s = |key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    let n = |key: &str| v.get(key).and_then(Value::as_u64).unwrap_or(0) as usize;
    match s("kind").as_str() {
        "dtype" => Error::DType {
            kernel: s("kernel"),
            arg: n("arg"),
            expected: s("expected"),
            got: s("got"),
        },
        "param" => Error::Param {
            kernel: s("kernel"),
            name: s("name"),
            message: s("message"),
        },
        "shape" => Error::shape(s("context"), s("message")),
        "unknown_kernel" => Error::UnknownKernel {
            name: s("name"),
            available: s("available"),
        },
        "nulls" => Error::Nulls {
            what: s("what"),
            count: n("count"),
        },
        "unsupported" => Error::UnsupportedType {
            what: s("what"),
            kind: match s("type_kind").as_str() {
                "dtype" => "dtype",
                "Arrow type" => "Arrow type",
                "extension type" => "extension type",
                "object type" => "object type",
                _ => "type",
            },
            name: s("name"),
        },
        "copy_required" => Error::CopyRequired {
            what: s("what"),
            reason: s("reason"),
        },
        "misaligned" => Error::Misaligned {
            what: s("what"),
            address: n("address"),
            align: n("align"),
            misalignment: n("misalignment"),
        },
        "byte_order" => Error::ByteOrder {
            what: s("what"),
            dtype: s("dtype"),
        },
        "out_of_memory" => Error::OutOfMemory {
            what: s("what"),
            bytes: v.get("bytes").and_then(Value::as_u64).unwrap_or(0),
            reason: s("reason"),
        },
        "invalid" => Error::invalid(format!("kernel {kernel:?}"), s("message")),
        _ => Error::kernel(kernel, s("message")),
    }
}

fn into_c_string(text: String) -> *mut c_char {
    CString::new(text.replace('\0', " "))
        .expect("NUL bytes were replaced")
        .into_raw()
}

/// The plugin's side of the ABI, used by [`export_kernels!`](crate::export_kernels).
#[doc(hidden)]
pub mod export {
    use super::*;

    /// The registry a plugin's kernels form (`Err` when two share a name).
    pub fn registry_of(kernels: Vec<Kernel>) -> std::result::Result<Registry, String> {
        let mut registry = Registry::new();
        for kernel in kernels {
            registry.register(kernel).map_err(|e| e.to_string())?;
        }
        Ok(registry)
    }

    /// `arrowbridge_plugin_v1_kernels`.
    pub fn kernels(registry: &std::result::Result<Registry, String>) -> *mut c_char {
        let description = match registry {
            Err(e) => json!({"error": e}),
            Ok(registry) => json!({
                "abi": 1,
                "kernels": registry.iter().map(|k| json!({
                    "name": k.name,
                    "signature": k.signature,
                    "params": k.params,
                    "arity": k.arity,
                    "distribution": k.distribution.to_json(),
                })).collect::<Vec<_>>(),
            }),
        };
        into_c_string(description.to_string())
    }

    /// `arrowbridge_plugin_v1_call`.
    ///
    /// # Safety
    /// The arguments must be as [`CallFn`] describes.
    pub unsafe fn call(
        registry: &std::result::Result<Registry, String>,
        request: *const c_char,
        n: usize,
        arrays: *mut FFI_ArrowArray,
        schemas: *const FFI_ArrowSchema,
        emit: EmitFn,
        ctx: *mut c_void,
    ) -> *mut c_char {
        let result = catch_unwind(AssertUnwindSafe(|| -> Result<()> {
            // Take every input first, so that each is released exactly once whatever fails.
            // SAFETY: `arrays` and `schemas` hold `n` valid structs (the caller's contract).
            let inputs: Vec<Result<ArrowTensor>> = (0..n)
                .map(|i| unsafe { import(arrays.add(i), schemas.add(i)) })
                .collect();
            // SAFETY: `request` is a NUL-terminated string (the caller's contract).
            let request = unsafe { CStr::from_ptr(request) }.to_string_lossy();
            let request: Value = serde_json::from_str(&request)
                .map_err(|e| Error::invalid("plugin call", format!("bad request: {e}")))?;
            let name = request.get("kernel").and_then(Value::as_str).unwrap_or("");
            let params = match request.get("params").and_then(Value::as_object) {
                Some(object) => Params::from_json(name, object)?,
                None => Params::default(),
            };
            let registry = registry
                .as_ref()
                .map_err(|e| Error::kernel(name, e.clone()))?;
            let inputs = inputs.into_iter().collect::<Result<Vec<_>>>()?;
            let outputs = registry.call(name, &inputs, params)?;
            for (i, output) in outputs.iter().enumerate() {
                let (mut array, mut schema) = export(output, &format!("result_{i}"))?;
                // SAFETY: `emit` and `ctx` are the caller's; the structs are valid.
                if unsafe { emit(ctx, &mut array, &mut schema) } != 0 {
                    return Err(Error::kernel(name, "the host could not take an output"));
                }
            }
            Ok(())
        }));
        match result {
            Ok(Ok(())) => std::ptr::null_mut(),
            Ok(Err(error)) => into_c_string(error_to_json(&error).to_string()),
            Err(panic) => into_c_string(
                json!({"kind": "kernel", "message": format!("panicked: {}", panic_message(panic.as_ref()))})
                    .to_string(),
            ),
        }
    }

    /// `arrowbridge_plugin_v1_free`.
    ///
    /// # Safety
    /// `text` must come from [`kernels`] or [`call`] and be freed once.
    pub unsafe fn free(text: *mut c_char) {
        if !text.is_null() {
            // SAFETY: per this function's contract.
            drop(unsafe { CString::from_raw(text) });
        }
    }
}

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
                    .and_then($crate::kernels::plugin::export::registry_of)
            })
        }

        /// The plugin's kernels, as JSON (arrowbridge plugin ABI v1).
        #[unsafe(no_mangle)]
        pub extern "C" fn arrowbridge_plugin_v1_kernels() -> *mut ::std::ffi::c_char {
            $crate::kernels::plugin::export::kernels(__arrowbridge_plugin_registry())
        }

        /// Runs one kernel (arrowbridge plugin ABI v1).
        ///
        /// # Safety
        /// Called by arrowbridge's host side only.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn arrowbridge_plugin_v1_call(
            request: *const ::std::ffi::c_char,
            n: usize,
            arrays: *mut $crate::kernels::plugin::FFI_ArrowArray,
            schemas: *const $crate::kernels::plugin::FFI_ArrowSchema,
            emit: $crate::kernels::plugin::EmitFn,
            ctx: *mut ::std::ffi::c_void,
        ) -> *mut ::std::ffi::c_char {
            unsafe {
                $crate::kernels::plugin::export::call(
                    __arrowbridge_plugin_registry(),
                    request,
                    n,
                    arrays,
                    schemas,
                    emit,
                    ctx,
                )
            }
        }

        /// Frees a string this plugin returned (arrowbridge plugin ABI v1).
        ///
        /// # Safety
        /// Called by arrowbridge's host side only, once per string.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn arrowbridge_plugin_v1_free(text: *mut ::std::ffi::c_char) {
            unsafe { $crate::kernels::plugin::export::free(text) }
        }
    };
}
