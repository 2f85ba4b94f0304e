//! The Python side of DLPack: `__dlpack__` producers (JAX, PyTorch, NumPy, pyarrow, CuPy's
//! host arrays, …) as NumPy views of their memory.

use arrowbridge::dlpack::{DLManagedTensor, DLManagedTensorVersioned, ManagedTensor, VERSION};
use arrowbridge::Error;
use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyCapsule, PyCapsuleMethods, PyTuple};
use std::ffi::CStr;

use crate::errors::BridgeResult;
use crate::numpy_output::strided_to_numpy;

const VERSIONED: &CStr = c"dltensor_versioned";
const LEGACY: &CStr = c"dltensor";
const USED_VERSIONED: &CStr = c"used_dltensor_versioned";
const USED_LEGACY: &CStr = c"used_dltensor";

/// Whether `obj` is a DLPack producer.
pub fn is_producer(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    crate::input::has_method(obj, intern!(obj.py(), "__dlpack__"))
}

/// The arguments of `__dlpack__(max_version=...)`: the version tuple and the keyword names.
pub(crate) fn dlpack_args(py: Python<'_>) -> &(Py<PyTuple>, Py<PyTuple>) {
    static ARGS: PyOnceLock<(Py<PyTuple>, Py<PyTuple>)> = PyOnceLock::new();
    ARGS.get_or_init(py, || {
        (
            PyTuple::new(py, [VERSION.major, VERSION.minor])
                .expect("a tuple of two ints")
                .unbind(),
            PyTuple::new(py, ["max_version"])
                .expect("a tuple of one str")
                .unbind(),
        )
    })
}

/// Takes the tensor `obj` exports through `__dlpack__`: asks for a versioned capsule
/// (`max_version=(1, 1)`, which carries the read-only flag) and falls back to the
/// unversioned protocol for producers that do not know `max_version`.
///
/// The device is read from the tensor, not asked of `__dlpack_device__` first (a Python
/// call on every import, as NumPy's `from_dlpack` does not make either): memory the CPU
/// cannot read is refused by [`ManagedTensor::strided`], naming the device, and the
/// producer's deleter then runs at once.
pub fn import(obj: &Bound<'_, PyAny>) -> BridgeResult<ManagedTensor> {
    let py = obj.py();
    // `__dlpack__(max_version=(1, 1))`, called with the keyword as a vectorcall: a dict of
    // keyword arguments would be built and unpacked on every import.
    let (version, kwnames) = dlpack_args(py);
    let dunder = intern!(py, "__dlpack__");
    let args = [obj.as_ptr(), version.as_ptr()];
    // SAFETY: `args` holds the receiver and one keyword value, all live for the call, and
    // `kwnames` names that one keyword; the result is a new reference or null.
    let capsule = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyObject_VectorcallMethod(
                dunder.as_ptr(),
                args.as_ptr(),
                1, // the receiver; no spare slot before `args`, so no ARGUMENTS_OFFSET
                kwnames.as_ptr(),
            ),
        )
    };
    let capsule = match capsule {
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
        // SAFETY: a capsule's name is a NUL-terminated string that lives as long as the
        // capsule's current name; it is read only before the capsule is renamed below.
        unsafe { n.as_cstr() }
    });
    let (managed, used) = match name {
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
/// negative ones included), read-only when the producer says so. The array's base is a
/// capsule that owns the tensor: the producer's deleter runs when the array and every view
/// of it are gone (NumPy's own `from_dlpack` keeps tensors the same way).
pub fn to_numpy<'py>(py: Python<'py>, managed: ManagedTensor) -> BridgeResult<Bound<'py, PyAny>> {
    let s = managed.strided()?;
    let owner = Box::into_raw(Box::new(managed));
    // SAFETY: `owner` is a valid pointer the capsule takes over; its destructor frees it
    // exactly once, and the name is a static string.
    let capsule = unsafe { ffi::PyCapsule_New(owner.cast(), OWNER.as_ptr(), Some(release)) };
    if capsule.is_null() {
        // SAFETY: the capsule was not made, so `owner` is still ours to free.
        drop(unsafe { Box::from_raw(owner) });
        return Err(PyErr::fetch(py).into());
    }
    // SAFETY: a new reference, just checked to be non-null.
    let base = unsafe { Bound::from_owned_ptr(py, capsule) };
    strided_to_numpy(py, &s, base)
}

/// The name of the capsules that own an imported tensor (the base of its NumPy arrays).
const OWNER: &CStr = c"arrowbridge.dlpack_owner";

/// Destructor of an owner capsule: drops the tensor, which calls the producer's deleter.
unsafe extern "C" fn release(capsule: *mut ffi::PyObject) {
    // SAFETY: only owner capsules have this destructor, and they hold a Box<ManagedTensor>.
    let owner = unsafe { ffi::PyCapsule_GetPointer(capsule, OWNER.as_ptr()) };
    if !owner.is_null() {
        // SAFETY: see above; the capsule is being destroyed, so this is the only release.
        drop(unsafe { Box::from_raw(owner.cast::<ManagedTensor>()) });
    }
}
