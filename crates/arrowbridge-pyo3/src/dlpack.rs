//! The Python side of DLPack: `__dlpack__` producers (JAX, PyTorch, NumPy, pyarrow, CuPy's
//! host arrays, …) as NumPy views of their memory.

use std::ffi::CStr;
use std::ptr::NonNull;
use std::sync::Arc;

use arrow_buffer::Buffer;
use arrowbridge::dlpack::{
    check_device, DLDevice, DLManagedTensor, DLManagedTensorVersioned, ManagedTensor, VERSION,
};
use arrowbridge::Error;
use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyCapsule, PyCapsuleMethods, PyDict};

use crate::errors::BridgeResult;
use crate::numpy_output::strided_to_numpy;

const VERSIONED: &CStr = c"dltensor_versioned";
const LEGACY: &CStr = c"dltensor";
const USED_VERSIONED: &CStr = c"used_dltensor_versioned";
const USED_LEGACY: &CStr = c"used_dltensor";

/// Whether `obj` is a DLPack producer.
pub fn is_producer(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    obj.hasattr(intern!(obj.py(), "__dlpack__"))
}

/// Takes the tensor `obj` exports through `__dlpack__`: asks for a versioned capsule
/// (`max_version=(1, 1)`, which carries the read-only flag) and falls back to the
/// unversioned protocol for producers that do not know `max_version`. Memory the CPU cannot
/// read is refused before anything is exported.
pub fn import(obj: &Bound<'_, PyAny>) -> BridgeResult<ManagedTensor> {
    let py = obj.py();
    if let Ok(device) = obj.call_method0(intern!(py, "__dlpack_device__")) {
        let (device_type, device_id): (i32, i32) = device.extract()?;
        check_device(
            DLDevice {
                device_type,
                device_id,
            },
            "DLPack producer",
        )?;
    }
    static KWARGS: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
    let kwargs = KWARGS.get_or_try_init(py, || {
        let kwargs = PyDict::new(py);
        kwargs.set_item("max_version", (VERSION.major, VERSION.minor))?;
        Ok::<_, PyErr>(kwargs.unbind())
    })?;
    let dunder = intern!(py, "__dlpack__");
    let capsule = match obj.call_method(dunder, (), Some(kwargs.bind(py))) {
        Ok(capsule) => capsule,
        // A producer older than DLPack 1.0 has no `max_version` keyword.
        Err(e) if e.is_instance_of::<PyTypeError>(py) => obj.call_method0(dunder)?,
        Err(e) => return Err(e.into()),
    };
    consume(&capsule)
}

/// Takes ownership of the tensor in a `dltensor_versioned` or `dltensor` capsule and marks
/// the capsule used (renamed `used_…`), so that its destructor leaves the tensor to us: the
/// deleter then runs once, when the returned tensor is dropped.
pub fn consume(capsule: &Bound<'_, PyAny>) -> BridgeResult<ManagedTensor> {
    let capsule = capsule
        .cast::<PyCapsule>()
        .map_err(|_| Error::invalid("DLPack producer", "__dlpack__ did not return a PyCapsule"))?;
    let name = capsule.name()?.map(|n| {
        // SAFETY: a capsule's name is a NUL-terminated string that lives as long as it.
        unsafe { n.as_cstr() }.to_owned()
    });
    let (managed, used) = match name.as_deref() {
        Some(n) if n == VERSIONED => {
            let ptr = capsule.pointer_checked(Some(VERSIONED))?;
            // SAFETY: an unused "dltensor_versioned" capsule holds a valid tensor that the
            // capsule's consumer owns from now on; on a version error nothing is taken.
            let managed = unsafe {
                ManagedTensor::from_versioned(ptr.as_ptr().cast::<DLManagedTensorVersioned>())
            }?;
            (managed, USED_VERSIONED)
        }
        Some(n) if n == LEGACY => {
            let ptr = capsule.pointer_checked(Some(LEGACY))?;
            // SAFETY: as above, for the unversioned struct.
            let managed =
                unsafe { ManagedTensor::from_legacy(ptr.as_ptr().cast::<DLManagedTensor>()) }?;
            (managed, USED_LEGACY)
        }
        other => {
            let name = other.map_or("no name".into(), |n| format!("{n:?}"));
            return Err(Error::invalid(
                "DLPack producer",
                format!("a capsule named {name}, expected \"dltensor_versioned\" or \"dltensor\" (a used capsule cannot be read twice)"),
            )
            .into());
        }
    };
    // SAFETY: renaming a live capsule; the new name is a static string.
    if unsafe { ffi::PyCapsule_SetName(capsule.as_ptr(), used.as_ptr()) } != 0 {
        // The capsule keeps the tensor (its destructor releases it), so ours must not.
        std::mem::forget(managed);
        return Err(PyErr::fetch(capsule.py()).into());
    }
    Ok(managed)
}

/// A NumPy array over a DLPack tensor's memory, with its shape and strides (any strides,
/// negative ones included), read-only when the producer says so. The tensor is released
/// when the array and every view of it are gone.
pub fn to_numpy<'py>(py: Python<'py>, managed: ManagedTensor) -> BridgeResult<Bound<'py, PyAny>> {
    let s = managed.strided()?;
    let buffer = match NonNull::new(s.span_start as *mut u8) {
        // SAFETY: the producer keeps the `span` bytes at `span_start` (every element's
        // bytes) alive until its deleter runs; `managed` calls it when the buffer goes.
        Some(ptr) if s.span > 0 => unsafe {
            Buffer::from_custom_allocation(ptr, s.span, Arc::new(managed))
        },
        _ => Buffer::from(arrow_buffer::MutableBuffer::new(0)),
    };
    strided_to_numpy(py, &s, buffer)
}
