//! [`ArrowTensor`]s as NumPy arrays over the same memory.

use std::os::raw::c_int;

use arrowbridge::dlpack::Strided;
use arrowbridge::{ArrowTensor, DType, ALL_DTYPES};
use numpy::npyffi::{get_type_object, npy_intp, NpyTypes, NPY_ARRAY_WRITEABLE, PY_ARRAY_API};
use numpy::PyArrayDescr;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use smallvec::SmallVec;

use crate::errors::BridgeResult;

/// NumPy's NPY_MAXDIMS.
const MAX_DIMS: usize = 64;

/// The NumPy dtype object of `dtype`, created once per dtype.
pub(crate) fn descr(py: Python<'_>, dtype: DType) -> PyResult<Bound<'_, PyArrayDescr>> {
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

/// A NumPy array viewing `tensor`'s memory; its `base` (an `ArrowMemory`, see
/// [`crate::arrow_memory`]) keeps the memory alive.
pub fn tensor_to_numpy<'py>(
    py: Python<'py>,
    tensor: &ArrowTensor,
    writeable: bool,
) -> BridgeResult<Bound<'py, PyAny>> {
    let layout = Layout::of(tensor)?;
    let base = crate::arrow_memory::new(py, tensor.values().clone())?;
    layout.into_numpy(py, writeable, base)
}

/// [`tensor_to_numpy`] of a tensor no longer needed: its buffer moves into the base rather
/// than being shared with it (no reference count to raise, then lower).
pub fn tensor_into_numpy(
    py: Python<'_>,
    tensor: ArrowTensor,
    writeable: bool,
) -> BridgeResult<Bound<'_, PyAny>> {
    let layout = Layout::of(&tensor)?;
    let base = crate::arrow_memory::new(py, tensor.into_values())?;
    layout.into_numpy(py, writeable, base)
}

/// A NumPy array viewing `tensor`'s memory with `base` as its base object, which must keep
/// that memory alive (an `ArrowMemory`, or the NumPy array that owns the memory).
pub fn tensor_to_numpy_with_base<'py>(
    py: Python<'py>,
    tensor: &ArrowTensor,
    writeable: bool,
    base: Bound<'py, PyAny>,
) -> BridgeResult<Bound<'py, PyAny>> {
    Layout::of(tensor)?.into_numpy(py, writeable, base)
}

/// A NumPy array over a checked DLPack tensor's memory (any strides), whose `base` keeps
/// that memory alive. Read-only when the producer says so.
pub fn strided_to_numpy<'py>(
    py: Python<'py>,
    s: &Strided,
    base: Bound<'py, PyAny>,
) -> BridgeResult<Bound<'py, PyAny>> {
    check_ndim(s.shape.len())?;
    let layout = Layout {
        dtype: s.dtype,
        dims: s.shape.iter().map(|&n| n as npy_intp).collect(),
        strides: Some(s.strides.iter().map(|&n| n as npy_intp).collect()),
        data: s.first.cast_mut(),
    };
    layout.into_numpy(py, !s.read_only, base)
}

fn check_ndim(ndim: usize) -> BridgeResult<()> {
    if ndim > MAX_DIMS {
        return Err(arrowbridge::Error::shape(
            "NumPy array",
            format!("{ndim} dimensions; NumPy allows at most {MAX_DIMS}"),
        )
        .into());
    }
    Ok(())
}

/// What NumPy needs to know of a tensor to view it.
struct Layout {
    dtype: DType,
    /// Most arrays have few dimensions: these stay on the stack.
    dims: SmallVec<[npy_intp; 8]>,
    /// Strides in bytes; `None` for C order, which NumPy fills in itself (and then skips
    /// re-deriving the array's flags).
    strides: Option<SmallVec<[npy_intp; 8]>>,
    data: *mut u8,
}

impl Layout {
    fn of(tensor: &ArrowTensor) -> BridgeResult<Layout> {
        let ndim = tensor.shape().len();
        check_ndim(ndim)?;
        let dims = tensor.shape().iter().map(|&n| n as npy_intp).collect();
        let c_order = tensor.axis_order().iter().enumerate().all(|(i, &a)| i == a);
        let strides = (!c_order).then(|| {
            let mut strides = smallvec::smallvec![0; ndim];
            tensor.byte_strides_into(&mut strides);
            strides
        });
        Ok(Layout {
            dtype: tensor.dtype(),
            dims,
            strides,
            data: tensor.data_ptr().cast_mut(),
        })
    }

    /// The array, with `base` (which keeps the memory at `data` alive) as its base.
    fn into_numpy<'py>(
        mut self,
        py: Python<'py>,
        writeable: bool,
        base: Bound<'py, PyAny>,
    ) -> BridgeResult<Bound<'py, PyAny>> {
        let descr = descr(py, self.dtype)?;
        let flags: c_int = if writeable { NPY_ARRAY_WRITEABLE } else { 0 };
        let strides = self
            .strides
            .as_mut()
            .map_or(std::ptr::null_mut(), |s| s.as_mut_ptr());
        // SAFETY: `descr` is a valid dtype; NewFromDescr steals a reference to it, so one is
        // added first. dims and strides (or C order) describe the tensor's elements inside
        // the buffer that starts at `data` (ArrowTensor checked this); NumPy does not own
        // the data and `base`, set below, keeps it alive. SetBaseObject steals the
        // reference `into_ptr` hands over.
        unsafe {
            let subtype = get_type_object(py, NpyTypes::PyArray_Type);
            pyo3::ffi::Py_INCREF(descr.as_ptr());
            let array = PY_ARRAY_API.PyArray_NewFromDescr(
                py,
                subtype,
                descr.as_ptr().cast(),
                self.dims.len() as c_int,
                self.dims.as_mut_ptr(),
                strides,
                self.data.cast(),
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
}
