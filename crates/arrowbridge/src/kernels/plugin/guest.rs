//! The plugin's side of the ABI: what [`export_kernels!`](crate::export_kernels) compiles
//! into a plugin library.

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use serde_json::json;
use smallvec::SmallVec;

use super::super::{Kernel, Registry};
use super::abi::{
    adopt, describe, error_to_json, into_c_string, params_from_abi, release_buffer, AbiParam,
    AbiTensor, EmitFn, ABI_VERSION,
};
use crate::error::{panic_message, Error, Result};
use crate::tensor::ArrowTensor;

/// The registry a plugin's kernels form (`Err` when two share a name).
pub fn registry_of(kernels: Vec<Kernel>) -> std::result::Result<Registry, String> {
    let mut registry = Registry::new();
    for kernel in kernels {
        registry.register(kernel).map_err(|e| e.to_string())?;
    }
    Ok(registry)
}

/// [`AbiPlugin::kernels`](super::AbiPlugin::kernels): the kernels as JSON, in the order
/// their numbers in [`call`] refer to.
pub fn kernels(registry: &std::result::Result<Registry, String>) -> *mut c_char {
    let description = match registry {
        Err(e) => json!({"error": e}),
        Ok(registry) => json!({
            "abi": ABI_VERSION,
            "kernels": registry.iter().map(|k| json!({
                "name": k.name,
                "signature": k.signature,
                "params": k.params,
                "arity": k.arity,
                "distribution": k.distribution.to_json(),
                "constant_time": k.constant_time,
                "ragged": k.ragged,
            })).collect::<Vec<_>>(),
        }),
    };
    into_c_string(description.to_string())
}

/// [`AbiPlugin::call`](super::AbiPlugin::call).
///
/// # Safety
/// The arguments must be as [`CallFn`](super::abi::CallFn) describes.
#[allow(clippy::too_many_arguments)] // the C entry point's arguments, plus the registry
pub unsafe fn call(
    registry: &std::result::Result<Registry, String>,
    kernel: usize,
    inputs: *const AbiTensor,
    n_inputs: usize,
    params: *const AbiParam,
    n_params: usize,
    emit: EmitFn,
    ctx: *mut c_void,
) -> *mut c_char {
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<()> {
        // Take every input first, so that each owner is released exactly once whatever fails.
        // SAFETY: `inputs` holds `n_inputs` valid descriptors (the caller's contract).
        let inputs: SmallVec<[Result<ArrowTensor>; 4]> = (0..n_inputs)
            .map(|i| unsafe { adopt(&*inputs.add(i)) })
            .collect();
        let registry = registry
            .as_ref()
            .map_err(|e| Error::kernel("?", e.clone()))?;
        let kernel = registry
            .kernels
            .get(kernel)
            .ok_or_else(|| Error::invalid("plugin call", format!("no kernel number {kernel}")))?;
        let params = match n_params {
            0 => Default::default(),
            // SAFETY: `params` holds `n_params` valid parameters (the caller's contract).
            n => unsafe { params_from_abi(kernel.name, std::slice::from_raw_parts(params, n)) }?,
        };
        let inputs = inputs.into_iter().collect::<Result<SmallVec<[_; 4]>>>()?;
        for output in kernel.call(&inputs, params)? {
            let values = output.values().clone();
            let (tensor, _names) = describe(&output, values, release_buffer);
            // SAFETY: `emit` and `ctx` are the caller's; the descriptor (and the names it
            // points into) are valid for the call, and `emit` takes its owner.
            if unsafe { emit(ctx, &tensor) } != 0 {
                return Err(Error::kernel(
                    kernel.name,
                    "the host could not take an output",
                ));
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
