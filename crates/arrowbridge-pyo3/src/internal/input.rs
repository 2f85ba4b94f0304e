//! Any array-like Python object as an [`ArrowTensor`]: NumPy arrays, Arrow PyCapsule
//! producers (pyarrow, polars, duckdb, nanoarrow, arro3, …) and DLPack producers (JAX,
//! PyTorch, …).

use arrowbridge::{ArrowTensor, Error};
use numpy::PyUntypedArray;
use pyo3::intern;
use pyo3::prelude::*;

use crate::capsule::{import_c_array, import_c_stream, imported_tensor};
use crate::errors::{BridgeError, BridgeResult};
use crate::numpy_input::{tensor_from_numpy, CopyPolicy, Realign, Want};

/// The protocol an array-like object is read through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// A `numpy.ndarray` (or subclass).
    Numpy,
    /// An Arrow array producer (`__arrow_c_array__`).
    ArrowArray,
    /// An Arrow stream producer (`__arrow_c_stream__`): a table, a chunked array.
    ArrowStream,
    /// A DLPack producer (`__dlpack__`) that is not also an Arrow producer.
    DLPack,
    /// None of these.
    Unknown,
}

/// Which protocol `obj` is read through. Arrow producers that also speak DLPack (pyarrow)
/// go through the Arrow interface, which carries their extension types.
pub fn protocol(obj: &Bound<'_, PyAny>) -> PyResult<Protocol> {
    let py = obj.py();
    Ok(if obj.cast::<PyUntypedArray>().is_ok() {
        Protocol::Numpy
    } else if has_method(obj, intern!(py, "__arrow_c_array__"))? {
        Protocol::ArrowArray
    } else if has_method(obj, intern!(py, "__arrow_c_stream__"))? {
        Protocol::ArrowStream
    } else if crate::dlpack::is_producer(obj)? {
        Protocol::DLPack
    } else {
        Protocol::Unknown
    })
}

unsafe extern "C" {
    /// CPython's lookup of a name along a type's MRO, through its method cache; sets no
    /// exception. Private API, stable since Python 2 (Cython's generated code relies on it).
    fn _PyType_Lookup(
        type_: *mut pyo3::ffi::PyTypeObject,
        name: *mut pyo3::ffi::PyObject,
    ) -> *mut pyo3::ffi::PyObject;
}

/// Whether `obj` has the protocol method `name` (`__arrow_c_array__`, `__dlpack__`, ...).
///
/// Looked up on the type, as Python looks up special methods and as NumPy looks up
/// `__array__` (its `PyArray_LookupSpecial`): a probe of the method cache. `hasattr` of a
/// missing name formats an `AttributeError` before discarding it, which was most of the time
/// of a DLPack import. Types with their own `__getattr__` (proxies that forward to a wrapped
/// array) are asked with `hasattr`.
pub fn has_method(
    obj: &Bound<'_, PyAny>,
    name: &Bound<'_, pyo3::types::PyString>,
) -> PyResult<bool> {
    let type_ = obj.get_type();
    let type_ptr = type_.as_type_ptr();
    // SAFETY: both pointers are live objects (a type and a str) for the call; the result is
    // a borrowed reference that is only compared with null.
    if !unsafe { _PyType_Lookup(type_ptr, name.as_ptr()) }.is_null() {
        return Ok(true);
    }
    // SAFETY: reads a slot of a live type object.
    let getattro = unsafe { (*type_ptr).tp_getattro };
    // Compared by address: both are the one exported symbol of libpython.
    let generic = pyo3::ffi::PyObject_GenericGetAttr as *const () as usize;
    if getattro.map(|f| f as *const () as usize) == Some(generic) {
        return Ok(false);
    }
    obj.hasattr(name)
}

/// `obj` as a NumPy array when it is one, or a NumPy view of the tensor a DLPack producer
/// exports (no copy, read-only unless the producer says it may be written); `None` for
/// anything else.
pub fn as_numpy<'py>(obj: &Bound<'py, PyAny>) -> BridgeResult<Option<Bound<'py, PyUntypedArray>>> {
    match protocol(obj)? {
        Protocol::Numpy => Ok(Some(obj.cast::<PyUntypedArray>()?.clone())),
        Protocol::DLPack => Ok(Some(dlpack_numpy(obj)?)),
        _ => Ok(None),
    }
}

/// A NumPy view of the tensor the DLPack producer `obj` exports.
pub fn dlpack_numpy<'py>(obj: &Bound<'py, PyAny>) -> BridgeResult<Bound<'py, PyUntypedArray>> {
    let managed = crate::dlpack::import(obj)?;
    let array = crate::dlpack::to_numpy(obj.py(), managed)?;
    Ok(array.cast_into::<PyUntypedArray>().map_err(PyErr::from)?)
}

/// Any array-like input as a tensor: NumPy arrays and DLPack tensors are wrapped in place
/// (`want` says which layouts), Arrow producers are imported through the PyCapsule
/// interface.
pub fn input_tensor(
    obj: &Bound<'_, PyAny>,
    want: Want,
    copy: CopyPolicy,
) -> BridgeResult<ArrowTensor> {
    read_tensor(obj, protocol(obj)?, want, copy)
}

/// [`input_tensor`] of an object whose [`protocol`] the caller already knows.
pub fn read_tensor(
    obj: &Bound<'_, PyAny>,
    protocol: Protocol,
    want: Want,
    copy: CopyPolicy,
) -> BridgeResult<ArrowTensor> {
    let allow_copy = copy != Some(false);
    match protocol {
        Protocol::Numpy => {
            let array = obj.cast::<PyUntypedArray>()?;
            tensor_from_numpy(array, want, copy, None, Realign::IfCopyAllowed)
        }
        Protocol::ArrowArray => imported_tensor(import_c_array(obj, allow_copy)?, allow_copy),
        Protocol::ArrowStream => imported_tensor(import_c_stream(obj, allow_copy)?, allow_copy),
        Protocol::DLPack => {
            let array = dlpack_numpy(obj)?;
            tensor_from_numpy(&array, want, copy, None, Realign::IfCopyAllowed)
        }
        Protocol::Unknown => Err(unsupported(obj)),
    }
}

/// The error for an object no protocol reads.
pub fn unsupported(obj: &Bound<'_, PyAny>) -> BridgeError {
    let name = obj
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    let ragged = if obj.is_instance_of::<pyo3::types::PyList>() {
        "; a list of arrays is ragged data, which to_arrow and the ragged kernels (ragged_sum, pad) take"
    } else {
        ""
    };
    Error::UnsupportedType {
        what: "input".into(),
        kind: "object type",
        name: format!(
            "{name} (expected a numpy.ndarray, an object with __arrow_c_array__ or __arrow_c_stream__, or a DLPack producer with __dlpack__{ragged})"
        ),
    }
    .into()
}

/// A column of a table to write or send: NumPy arrays in row form (copied into C order when
/// axis 0 is not outermost), Arrow producers as they are.
pub fn column_input(obj: &Bound<'_, PyAny>) -> BridgeResult<ArrowTensor> {
    input_tensor(obj, Want::Rows, None)
}

/// One record batch of named columns (see [`arrowbridge::ipc::record_batch_of`] for the
/// layout); ragged data (a list of arrays, an `arrow.variable_shape_tensor`) is one row per
/// array.
pub fn columns_batch(
    names: &[String],
    arrays: &Bound<'_, pyo3::types::PyList>,
) -> BridgeResult<arrow_array::RecordBatch> {
    let columns = arrays
        .iter()
        .map(|a| crate::ragged::any_column(&a))
        .collect::<BridgeResult<Vec<_>>>()?;
    let named: Vec<(&str, &arrowbridge::ipc::Column)> =
        names.iter().map(String::as_str).zip(&columns).collect();
    Ok(arrowbridge::ipc::record_batch_of(&named)?)
}
