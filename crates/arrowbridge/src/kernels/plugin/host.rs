//! The host's side: loading a plugin library, and calling its kernels.

use std::collections::BTreeSet;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;
use smallvec::SmallVec;

use super::super::{Distribution, Kernel, Params, Registry};
use super::abi::{
    adopt, describe, error_from_json, params_to_abi, release_buffer, AbiPlugin, AbiTensor,
    ABI_VERSION, PLUGIN_SYMBOL,
};
use crate::error::{Error, Result};
use crate::tensor::ArrowTensor;

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
        let has = |name: &str| {
            // SAFETY: the symbol is only looked up, not used.
            unsafe { library.get::<*const c_void>(name.as_bytes()) }.is_ok()
        };
        // SAFETY: `arrowbridge_plugin` is `extern "C" fn() -> *const AbiPlugin` in every
        // ABI that has it (v2 and later); the version inside is checked before anything else.
        let entry = unsafe {
            library.get::<unsafe extern "C" fn() -> *const AbiPlugin>(PLUGIN_SYMBOL.as_bytes())
        };
        let entry = match entry {
            Ok(entry) => *entry,
            Err(_) if has("arrowbridge_plugin_v1_kernels") => {
                return Err(plugin_error(
                    &what,
                    format!(
                        "built for plugin ABI 1 by an older arrowbridge; this arrowbridge speaks \
                         ABI {ABI_VERSION}: rebuild the plugin against it"
                    ),
                ))
            }
            Err(e) => {
                return Err(plugin_error(
                    &what,
                    format!("not an arrowbridge plugin: {PLUGIN_SYMBOL} is missing: {e}"),
                ))
            }
        };
        // A plugin is never unloaded: arrays it allocated may outlive any handle to it.
        std::mem::forget(library);
        // SAFETY: the entry point takes nothing and returns a pointer to a static of the
        // library, which stays loaded for the life of the process.
        let kernels = unsafe { plugin_kernels(&what, entry()) }?;
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

/// The kernels a plugin offers, as [`Kernel`]s that call into it; `plugin` is what its
/// `arrowbridge_plugin` returned. A plugin built for another ABI version is an error.
///
/// # Safety
/// `plugin` is NULL or points to a plugin's `AbiPlugin` (of any ABI version) that stays
/// valid, as does the library's code, for as long as the kernels or any array they return
/// live (usually: forever).
pub unsafe fn plugin_kernels(what: &str, plugin: *const AbiPlugin) -> Result<Vec<Kernel>> {
    // SAFETY: per this function's contract; the first two fields (the version and the size)
    // are the same in every ABI version.
    let (version, size) = match unsafe { plugin.as_ref() } {
        Some(p) => (p.abi_version, p.size as usize),
        None => return Err(plugin_error(what, format!("{PLUGIN_SYMBOL} returned NULL"))),
    };
    if version != ABI_VERSION || size < std::mem::size_of::<AbiPlugin>() {
        return Err(plugin_error(
            what,
            format!(
                "built for plugin ABI {version} (entry points of {size} bytes); this \
                 arrowbridge speaks ABI {ABI_VERSION}: rebuild the plugin against it"
            ),
        ));
    }
    // SAFETY: the version matched, and the struct lives as long as the library (forever).
    let plugin: &'static AbiPlugin = unsafe { &*plugin };
    // SAFETY: per this function's contract.
    let text = unsafe { take_string(plugin, (plugin.kernels)()) }
        .ok_or_else(|| plugin_error(what, "the plugin returned no kernel list"))?;
    let description: Value = serde_json::from_str(&text)
        .map_err(|e| plugin_error(what, format!("bad kernel list: {e}")))?;
    if let Some(error) = description.get("error").and_then(Value::as_str) {
        return Err(plugin_error(what, error));
    }
    let list = description
        .get("kernels")
        .and_then(Value::as_array)
        .ok_or_else(|| plugin_error(what, "bad kernel list: no \"kernels\" array"))?;
    list.iter()
        .enumerate()
        .map(|(index, entry)| {
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
            let distribution = match entry.get("distribution") {
                None => Distribution::Local,
                Some(value) => Distribution::from_json(value, intern).ok_or_else(|| {
                    plugin_error(
                        what,
                        format!("kernel {name:?} declares an unknown distribution {value}"),
                    )
                })?,
            };
            let constant_time = entry
                .get("constant_time")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            // A plugin of an older arrowbridge declares no ragged kernels.
            let ragged = entry
                .get("ragged")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            Ok(Kernel {
                name,
                signature: intern(text("signature")?),
                params: intern_list(params),
                arity,
                distribution,
                constant_time,
                ragged,
                func: Arc::new(move |args: &[ArrowTensor], params: &Params| {
                    // SAFETY: per this function's contract.
                    unsafe { call_plugin(plugin, index, name, args, params) }
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
/// `ptr` is null or a string that `plugin` returned and has not been freed; it is freed
/// here (by the plugin's own `free`) and must not be used again.
unsafe fn take_string(plugin: &AbiPlugin, ptr: *mut c_char) -> Option<String> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: the plugin returns NUL-terminated strings.
    let text = unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: the string came from this plugin and is released once.
    unsafe { (plugin.free)(ptr) };
    Some(text)
}

/// The outputs a call has received so far.
type Outputs = SmallVec<[Result<ArrowTensor>; 2]>;

/// The host's side of a call: describes `args`, runs kernel `index` in the plugin, adopts
/// its outputs.
///
/// # Safety
/// `plugin` holds the entry points of a loaded plugin whose ABI version was checked, and the
/// library stays loaded for as long as the outputs (whose memory it may own) live.
unsafe fn call_plugin(
    plugin: &'static AbiPlugin,
    index: usize,
    name: &'static str,
    args: &[ArrowTensor],
    params: &Params,
) -> Result<Vec<ArrowTensor>> {
    let mut names = SmallVec::<[_; 4]>::new();
    let inputs: SmallVec<[AbiTensor; 4]> = args
        .iter()
        .map(|t| {
            let (tensor, tensor_names) = describe(t, t.values().clone(), release_buffer);
            names.push(tensor_names);
            tensor
        })
        .collect();
    let abi_params = params_to_abi(params);
    let mut outputs = Outputs::new();
    // SAFETY: the descriptors and parameters are valid for the call, and their owners go to
    // the plugin, which releases each once.
    let error = unsafe {
        (plugin.call)(
            index,
            inputs.as_ptr(),
            inputs.len(),
            abi_params.as_ptr(),
            abi_params.len(),
            receive_output,
            (&mut outputs as *mut Outputs).cast(),
        )
    };
    // SAFETY: the string, if any, came from this plugin.
    if let Some(text) = unsafe { take_string(plugin, error) } {
        return Err(error_from_json(name, &text));
    }
    outputs.into_iter().collect()
}

/// The `emit` callback the host gives the plugin: adopts one output into `ctx`.
unsafe extern "C" fn receive_output(ctx: *mut c_void, tensor: *const AbiTensor) -> c_int {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the `Outputs` of `call_plugin`; `tensor` is the plugin's valid
        // descriptor of one output, whose owner the host takes.
        let outputs = unsafe { &mut *ctx.cast::<Outputs>() };
        // SAFETY: as above.
        outputs.push(unsafe { adopt(&*tensor) });
        0
    }))
    .unwrap_or(1)
}
