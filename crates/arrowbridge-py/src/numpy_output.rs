//! [`ArrowTensor`]s as NumPy arrays over the same memory.

use std::os::raw::c_int;

use arrow_buffer::Buffer;
use arrowbridge::{ArrowTensor, DType, ALL_DTYPES};
use numpy::npyffi::{get_type_object, npy_intp, NpyTypes, NPY_ARRAY_WRITEABLE, PY_ARRAY_API};
use numpy::PyArrayDescr;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use smallvec::SmallVec;

use crate::errors::BridgeResult;

/// The Arrow memory behind a NumPy array made by arrowbridge: the array's `base`. It holds
/// the Arrow buffers (and whatever owns them, a NumPy array or an IPC mapping) alive.
#[pyclass(frozen, weakref, module = "arrowbridge._native", name = "ArrowMemory")]
pub struct ArrowMemory {
    buffer: Buffer,
}

#[pymethods]
impl ArrowMemory {
    /// Bytes of the Arrow buffer viewed.
    #[getter]
    fn nbytes(&self) -> usize {
        self.buffer.len()
    }

    /// Address of the first byte viewed.
    #[getter]
    fn address(&self) -> usize {
        self.buffer.as_ptr() as usize
    }

    fn __repr__(&self) -> String {
        format!(
            "<ArrowMemory of {} bytes at {:#x}>",
            self.nbytes(),
            self.address()
        )
    }
}

/// NumPy's NPY_MAXDIMS.
const MAX_DIMS: usize = 64;

/// The NumPy dtype object of `dtype`, created once per dtype.
fn descr(py: Python<'_>, dtype: DType) -> PyResult<Bound<'_, PyArrayDescr>> {
    static DESCRS: PyOnceLock<Vec<Py<PyArrayDescr>>> = PyOnceLock::new();
    let all = DESCRS.get_or_try_init(py, || {
        ALL_DTYPES
            .iter()
            .map(|d| PyArrayDescr::new(py, d.name().as_str()).map(Bound::unbind))
            .collect::<PyResult<Vec<_>>>()
    })?;
    let index = ALL_DTYPES
        .iter()
        .position(|d| *d == dtype)
        .expect("ALL_DTYPES lists every dtype");
    Ok(all[index].bind(py).clone())
}

/// A NumPy array viewing `tensor`'s memory; its `base` (an [`ArrowMemory`]) keeps the memory
/// alive.
pub fn tensor_to_numpy<'py>(
    py: Python<'py>,
    tensor: &ArrowTensor,
    writeable: bool,
) -> BridgeResult<Bound<'py, PyAny>> {
    let base = ArrowMemory {
        buffer: tensor.values().clone(),
    };
    tensor_to_numpy_with_base(py, tensor, writeable, Bound::new(py, base)?.into_any())
}

/// A NumPy array viewing `tensor`'s memory with `base` as its base object, which must keep
/// that memory alive (an [`ArrowMemory`], or the NumPy array that owns the memory).
pub fn tensor_to_numpy_with_base<'py>(
    py: Python<'py>,
    tensor: &ArrowTensor,
    writeable: bool,
    base: Bound<'py, PyAny>,
) -> BridgeResult<Bound<'py, PyAny>> {
    let descr = descr(py, tensor.dtype())?;
    let ndim = tensor.shape().len();
    if ndim > MAX_DIMS {
        return Err(arrowbridge::Error::shape(
            "NumPy array",
            format!("{ndim} dimensions; NumPy allows at most {MAX_DIMS}"),
        )
        .into());
    }
    // Most arrays have few dimensions: these stay on the stack, unzeroed beyond `ndim`.
    let mut dims: SmallVec<[npy_intp; 8]> = smallvec::smallvec![0; ndim];
    for (d, &n) in dims.iter_mut().zip(tensor.shape()) {
        *d = n as npy_intp;
    }
    // C order needs no strides: NumPy fills them in, and skips re-deriving the flags.
    let c_order = tensor.axis_order().iter().enumerate().all(|(i, &a)| i == a);
    let mut strides: SmallVec<[npy_intp; 8]> = smallvec::smallvec![0; ndim];
    tensor.byte_strides_into(&mut strides);
    let strides_ptr = if c_order {
        std::ptr::null_mut()
    } else {
        strides.as_mut_ptr()
    };
    let flags: c_int = if writeable { NPY_ARRAY_WRITEABLE } else { 0 };
    // SAFETY: `descr` is a valid dtype; NewFromDescr steals a reference to it, so one is
    // added first. dims and strides (or C order) describe `tensor.len()` elements inside the buffer that
    // starts at data_ptr (ArrowTensor checked this); NumPy does not own the data and `base`,
    // set below, keeps it alive. SetBaseObject steals the reference `into_ptr` hands over.
    unsafe {
        let subtype = get_type_object(py, NpyTypes::PyArray_Type);
        pyo3::ffi::Py_INCREF(descr.as_ptr());
        let array = PY_ARRAY_API.PyArray_NewFromDescr(
            py,
            subtype,
            descr.as_ptr().cast(),
            ndim as c_int,
            dims.as_mut_ptr(),
            strides_ptr,
            tensor.data_ptr() as *mut _,
            flags,
            std::ptr::null_mut(),
        );
        let array = Bound::from_owned_ptr_or_err(py, array)?;
        if PY_ARRAY_API.PyArray_SetBaseObject(py, array.as_ptr().cast(), base.into_ptr()) < 0 {
            return Err(PyErr::fetch(py).into());
        }
        Ok(array)
    }
}
