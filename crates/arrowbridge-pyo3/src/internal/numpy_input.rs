//! NumPy arrays as [`ArrowTensor`]s over the same memory.

use std::ptr::NonNull;
use std::sync::Arc;

use arrow_buffer::Buffer;
use arrowbridge::{block_order, ArrowTensor, DType, Error, Form};
use numpy::npyffi::{NPY_ORDER, PY_ARRAY_API};
use numpy::{PyArrayDescr, PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::errors::BridgeResult;

/// Keeps a NumPy array (and so its memory) alive while Arrow buffers point into it.
struct NumpyOwner(Option<Py<PyAny>>);

impl Drop for NumpyOwner {
    fn drop(&mut self) {
        let Some(array) = self.0.take() else { return };
        // Arrow consumers (pyarrow's C++ among them) release buffers with the GIL held but
        // outside any PyO3 call; PyO3 would then defer the decref until our next call. When
        // this thread holds the GIL, release the array now so its refcount is exact.
        // SAFETY: PyGILState_Check only reads this thread's state.
        if unsafe { pyo3::ffi::PyGILState_Check() } == 1 {
            // SAFETY: the GIL is held, and `into_ptr` hands over the one owned reference.
            unsafe { pyo3::ffi::Py_DecRef(array.into_ptr()) };
        }
        // Otherwise `array` drops here and PyO3 decrefs it once a thread holds the GIL.
    }
}

// The owner is only ever dropped, never read, so a panic cannot observe it half-updated.
impl std::panic::RefUnwindSafe for NumpyOwner {}

/// The address of an ndarray's first element.
pub fn data_address(array: &Bound<'_, PyUntypedArray>) -> usize {
    // SAFETY: reads the data pointer field of a live ndarray; nothing is dereferenced.
    unsafe { (*array.as_array_ptr()).fields.data as usize }
}

/// Which arrangements of memory the caller can use without a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Axis 0 outermost: rows of an Arrow array.
    Rows,
    /// The whole array as one tensor element (any axis order).
    Element,
    /// Rows when axis 0 is outermost, else the whole array as one element.
    AnyBlock,
}

/// Whether misaligned data may be copied into an aligned buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Realign {
    /// As the copy policy allows.
    IfCopyAllowed,
    /// Never: misaligned data is an error (kernel inputs).
    Never,
}

/// NumPy's `copy` keyword: `Some(true)` always, `None` when needed, `Some(false)` never.
pub type CopyPolicy = Option<bool>;

/// The arrowbridge dtype of a NumPy dtype.
pub fn numpy_dtype(descr: &Bound<'_, PyArrayDescr>) -> BridgeResult<DType> {
    let describe = || {
        descr
            .str()
            .map(|s| s.to_string())
            .unwrap_or_else(|_| "?".into())
    };
    if descr.is_native_byteorder() == Some(false) {
        return Err(Error::ByteOrder {
            what: "array".into(),
            dtype: descr.getattr("str")?.to_string(),
        }
        .into());
    }
    let unsupported = || Error::UnsupportedType {
        what: "array".into(),
        kind: "dtype",
        name: describe(),
    };
    let dtype = match (descr.kind(), descr.itemsize()) {
        (b'b', 1) => DType::Bool,
        (b'i', 1) => DType::Int8,
        (b'i', 2) => DType::Int16,
        (b'i', 4) => DType::Int32,
        (b'i', 8) => DType::Int64,
        (b'u', 1) => DType::UInt8,
        (b'u', 2) => DType::UInt16,
        (b'u', 4) => DType::UInt32,
        (b'u', 8) => DType::UInt64,
        (b'f', 2) => DType::Float16,
        (b'f', 4) => DType::Float32,
        (b'f', 8) => DType::Float64,
        (b'c', 8) => DType::Complex64,
        (b'c', 16) => DType::Complex128,
        (b'M' | b'm', 8) => {
            // `str` is e.g. "<M8[ns]"; the unit is what DType::from_name parses.
            let s: String = descr.getattr("str")?.extract()?;
            let unit = s.split_once('[').map(|(_, u)| u).unwrap_or("]");
            let base = if descr.kind() == b'M' {
                "datetime64"
            } else {
                "timedelta64"
            };
            DType::from_name(&format!("{base}[{unit}")).map_err(|_| unsupported())?
        }
        _ => return Err(unsupported().into()),
    };
    Ok(dtype)
}

/// `numpy.ma.MaskedArray`, imported once.
pub(crate) fn masked_type(py: Python<'_>) -> PyResult<&Py<PyAny>> {
    static MASKED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    MASKED.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("numpy.ma")?.getattr("MaskedArray")?.unbind())
    })
}

/// Refuses a masked array that masks any value: Arrow data read through it would show the
/// values behind the mask as valid data. A masked array with no masked value is its data.
pub(crate) fn reject_masked(array: &Bound<'_, PyUntypedArray>) -> BridgeResult<()> {
    if array.is_exact_instance_of::<PyUntypedArray>() {
        return Ok(()); // the common case costs one type comparison
    }
    let py = array.py();
    let masked_type = masked_type(py)?;
    if !array.is_instance(masked_type.bind(py))? {
        return Ok(());
    }
    let count: usize = py
        .import("numpy.ma")?
        .call_method1("count_masked", (array,))?
        .extract()?;
    if count > 0 {
        return Err(Error::Nulls {
            what: format!("masked array of shape {}", py_tuple(array.shape())),
            count,
        }
        .into());
    }
    Ok(())
}

/// Wraps a NumPy array as an [`ArrowTensor`], copying only where `want` and the layout
/// require it and `copy` allows it.
pub fn tensor_from_numpy(
    array: &Bound<'_, PyUntypedArray>,
    want: Want,
    copy: CopyPolicy,
    dim_names: Option<Vec<String>>,
    realign: Realign,
) -> BridgeResult<ArrowTensor> {
    reject_masked(array)?;
    let dtype = numpy_dtype(&array.dtype())?;
    let shape = array.shape();
    let data = data_address(array) as *mut u8;
    let order = block_order(shape, array.strides(), dtype.itemsize());
    let aligned = array.is_empty() || (data as usize).is_multiple_of(dtype.alignment());
    if !aligned && realign == Realign::Never {
        return Err(Error::Misaligned {
            what: format!("array of dtype {dtype}"),
            address: data as usize,
            align: dtype.alignment(),
            misalignment: data as usize % dtype.alignment(),
        }
        .into());
    }
    let layout = order.filter(|o| match want {
        Want::Rows => o.first().is_none_or(|&a| a == 0),
        Want::Element | Want::AnyBlock => true,
    });
    let form = |order: &[usize]| match want {
        Want::Rows => Form::Rows,
        Want::Element => Form::Element,
        Want::AnyBlock if order.first().is_none_or(|&a| a == 0) => Form::Rows,
        Want::AnyBlock => Form::Element,
    };
    match (layout, aligned, copy) {
        (Some(order), true, None | Some(false)) => {
            let nbytes = shape.iter().product::<usize>() * dtype.itemsize();
            let buffer = match NonNull::new(data) {
                // SAFETY: the elements form one block of `nbytes` bytes starting at `data`
                // (block_order checked the strides), and the owner keeps the ndarray that
                // owns (or borrows) that memory alive for as long as the buffer exists.
                Some(ptr) if nbytes > 0 => unsafe {
                    Buffer::from_custom_allocation(
                        ptr,
                        nbytes,
                        Arc::new(NumpyOwner(Some(array.clone().into_any().unbind()))),
                    )
                },
                _ => Buffer::from(arrow_buffer::MutableBuffer::new(0)),
            };
            let form = form(&order);
            Ok(ArrowTensor::from_buffer(
                buffer, dtype, shape, &order, form, dim_names,
            )?)
        }
        (layout, aligned, Some(false)) => {
            let reason = if !aligned {
                format!(
                    "data at address {:#x} is not aligned to {} bytes",
                    data as usize,
                    dtype.alignment()
                )
            } else if layout.is_none()
                && block_order(shape, array.strides(), dtype.itemsize()).is_some()
            {
                "axis 0 is not the outermost axis in memory (Fortran order or a transpose); whole=True keeps it zero-copy".to_string()
            } else {
                format!(
                    "strides {} do not describe one contiguous block",
                    py_tuple(array.strides())
                )
            };
            Err(Error::CopyRequired {
                what: format!("array of shape {} and dtype {dtype}", py_tuple(shape)),
                reason,
            }
            .into())
        }
        _ => {
            let copied = c_order_copy(array)?;
            tensor_from_numpy(&copied, want, None, dim_names, realign)
        }
    }
}

/// A C-ordered, aligned copy of `array`.
pub fn c_order_copy<'py>(
    array: &Bound<'py, PyUntypedArray>,
) -> PyResult<Bound<'py, PyUntypedArray>> {
    let py = array.py();
    // SAFETY: PyArray_NewCopy takes a borrowed ndarray and returns a new reference (or NULL
    // with an exception set), which from_owned_ptr_or_err takes over.
    let copy = unsafe {
        let ptr = PY_ARRAY_API.PyArray_NewCopy(py, array.as_array_ptr(), NPY_ORDER::NPY_CORDER);
        Bound::from_owned_ptr_or_err(py, ptr)?
    };
    Ok(copy.cast_into::<PyUntypedArray>()?)
}

/// Formats dimensions the way Python prints a shape: `(5, 3)`, `(7,)`, `()`.
pub fn py_tuple<T: std::fmt::Display>(dims: &[T]) -> String {
    match dims {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
