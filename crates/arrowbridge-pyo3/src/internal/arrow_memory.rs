//! `ArrowMemory`: the `base` of every NumPy array arrowbridge makes over Arrow memory it
//! owns. It holds the Arrow buffer (and whatever owns that: a Rust allocation, an IPC
//! mapping, a shared-memory segment) alive for as long as the array, or any view of it,
//! lives.
//!
//! The type is written against CPython's C API rather than as a `#[pyclass]`: one is created
//! and destroyed with nearly every call result, and PyO3's generic allocation and
//! deallocation (the type-object lookup, the panic and reference-pool guards around
//! `tp_dealloc`) took about 550 instructions per result, more than a small call's whole
//! Rust side. This costs about 100.

use std::ffi::{c_char, c_int, c_void};
use std::mem::{offset_of, ManuallyDrop};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, Ordering};

use arrow_buffer::Buffer;
use pyo3::ffi;
use pyo3::prelude::*;

/// The instance layout.
#[repr(C)]
struct ArrowMemory {
    ob_base: ffi::PyObject,
    /// The weak references to the object (CPython manages the list).
    weakrefs: *mut ffi::PyObject,
    buffer: ManuallyDrop<Buffer>,
}

/// The type object, created on first use and never freed.
static TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(null_mut());

/// Adds the `ArrowMemory` type to `module` (where `help()` and `isinstance` find it).
pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let ty = type_object(module.py())?;
    // SAFETY: `ty` is a live type object; the static holds a reference for the process.
    module.add("ArrowMemory", unsafe {
        Bound::from_borrowed_ptr(module.py(), ty.cast())
    })
}

/// The `ArrowMemory` type, created by the first caller (under the GIL, so once).
fn type_object(py: Python<'_>) -> PyResult<*mut ffi::PyTypeObject> {
    let ty = TYPE.load(Ordering::Acquire);
    if !ty.is_null() {
        return Ok(ty);
    }
    let getset = Box::leak(Box::new([
        ffi::PyGetSetDef {
            name: c"nbytes".as_ptr(),
            get: Some(nbytes),
            set: None,
            doc: c"Bytes of the Arrow buffer viewed.".as_ptr(),
            closure: null_mut(),
        },
        ffi::PyGetSetDef {
            name: c"address".as_ptr(),
            get: Some(address),
            set: None,
            doc: c"Address of the first byte viewed.".as_ptr(),
            closure: null_mut(),
        },
        // SAFETY: an all-zero PyGetSetDef is the list's terminator.
        unsafe { std::mem::zeroed() },
    ]));
    let members = Box::leak(Box::new([
        ffi::PyMemberDef {
            name: c"__weaklistoffset__".as_ptr(),
            type_code: ffi::Py_T_PYSSIZET,
            offset: offset_of!(ArrowMemory, weakrefs) as ffi::Py_ssize_t,
            flags: ffi::Py_READONLY,
            doc: null_mut(),
        },
        // SAFETY: an all-zero PyMemberDef is the list's terminator.
        unsafe { std::mem::zeroed() },
    ]));
    let slot = |slot: c_int, pfunc: *mut c_void| ffi::PyType_Slot { slot, pfunc };
    let slots = Box::leak(Box::new([
        slot(ffi::Py_tp_dealloc, dealloc as *mut c_void),
        slot(ffi::Py_tp_repr, repr as *mut c_void),
        slot(ffi::Py_tp_getset, getset.as_mut_ptr().cast()),
        slot(ffi::Py_tp_members, members.as_mut_ptr().cast()),
        slot(
            ffi::Py_tp_doc,
            c"The Arrow memory behind a NumPy array made by arrowbridge: the array's base. It \
              keeps the Arrow buffer (and whatever owns it) alive."
                .as_ptr() as *mut c_void,
        ),
        slot(0, null_mut()),
    ]));
    let spec = Box::leak(Box::new(ffi::PyType_Spec {
        name: c"arrowbridge._native.ArrowMemory".as_ptr(),
        basicsize: std::mem::size_of::<ArrowMemory>() as c_int,
        itemsize: 0,
        flags: (ffi::Py_TPFLAGS_DEFAULT
            | ffi::Py_TPFLAGS_IMMUTABLETYPE
            | ffi::Py_TPFLAGS_DISALLOW_INSTANTIATION) as _,
        slots: slots.as_mut_ptr(),
    }));
    // SAFETY: the spec and everything it points to are leaked, so they outlive the type;
    // PyType_FromSpec returns a new reference or NULL with an exception set.
    let ty = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyType_FromSpec(spec))? };
    // The static keeps the reference for the life of the process.
    let ty: *mut ffi::PyTypeObject = ty.into_ptr().cast();
    TYPE.store(ty, Ordering::Release);
    Ok(ty)
}

/// A new `ArrowMemory` holding `buffer`.
pub fn new(py: Python<'_>, buffer: Buffer) -> PyResult<Bound<'_, PyAny>> {
    let ty = type_object(py)?;
    // SAFETY: `ty` is the live ArrowMemory type, neither garbage-collected nor variable-size,
    // so its instances come from PyObject_Malloc (which its default tp_free, PyObject_Free,
    // releases). PyObject_Init sets the type and one reference, and takes a reference to
    // the heap type; both fields are written before anyone can see the object.
    unsafe {
        let object = ffi::PyObject_Malloc(std::mem::size_of::<ArrowMemory>()).cast::<ArrowMemory>();
        if object.is_null() {
            return Err(pyo3::exceptions::PyMemoryError::new_err(
                "no memory for ArrowMemory",
            ));
        }
        ffi::PyObject_Init(object.cast(), ty);
        std::ptr::addr_of_mut!((*object).weakrefs).write(null_mut());
        std::ptr::addr_of_mut!((*object).buffer).write(ManuallyDrop::new(buffer));
        Ok(Bound::from_owned_ptr(py, object.cast()))
    }
}

/// The buffer of an `ArrowMemory` object.
///
/// # Safety
/// `object` is a live ArrowMemory instance.
unsafe fn buffer<'a>(object: *mut ffi::PyObject) -> &'a Buffer {
    // SAFETY: per the contract, `object` has the ArrowMemory layout, initialized by `new`.
    unsafe { &(*object.cast::<ArrowMemory>()).buffer }
}

unsafe extern "C" fn dealloc(object: *mut ffi::PyObject) {
    // SAFETY: CPython calls tp_dealloc once, with the GIL held, on an instance whose last
    // reference went away. Dropping a Buffer does not panic (its owners release memory,
    // or decrement a Python reference with the GIL held). The instance holds a reference
    // to its heap type, released after the memory is freed.
    unsafe {
        let this = object.cast::<ArrowMemory>();
        if !(*this).weakrefs.is_null() {
            ffi::PyObject_ClearWeakRefs(object);
        }
        ManuallyDrop::drop(&mut (*this).buffer);
        let ty = ffi::Py_TYPE(object);
        let free = (*ty).tp_free.expect("every type has tp_free");
        free(object.cast());
        ffi::Py_DECREF(ty.cast());
    }
}

unsafe extern "C" fn nbytes(object: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a getter with an instance of the type.
    unsafe { ffi::PyLong_FromSize_t(buffer(object).len()) }
}

unsafe extern "C" fn address(object: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    // SAFETY: as in `nbytes`.
    unsafe { ffi::PyLong_FromSize_t(buffer(object).as_ptr() as usize) }
}

unsafe extern "C" fn repr(object: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: CPython calls tp_repr with an instance of the type.
    let buffer = unsafe { buffer(object) };
    let text = format!(
        "<ArrowMemory of {} bytes at {:#x}>",
        buffer.len(),
        buffer.as_ptr() as usize
    );
    // SAFETY: `text` is valid UTF-8 of the given length.
    unsafe { ffi::PyUnicode_FromStringAndSize(text.as_ptr() as *const c_char, text.len() as _) }
}
