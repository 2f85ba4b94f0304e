//! `call` and `kernels`: running registered Rust kernels on arrays from Python.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use std::ffi::CStr;

use arrowbridge::{ArrowTensor, Error, Kernel, Param, Params, Registry};
use numpy::PyUntypedArray;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use pyo3::{ffi, intern, Borrowed};
use smallvec::SmallVec;

use arrowbridge_pyo3::internal::input::{dlpack_numpy, protocol, read_tensor, Protocol};
use arrowbridge_pyo3::internal::numpy_input::{data_address, tensor_from_numpy, Realign, Want};
use arrowbridge_pyo3::internal::numpy_output::{tensor_into_numpy, tensor_to_numpy_with_base};
use arrowbridge_pyo3::internal::ragged::read_ragged;
use arrowbridge_pyo3::{no_panic, BridgeResult};

/// Inputs of at least this many bytes are processed with the GIL released.
const RELEASE_GIL_BYTES: usize = 1 << 16;

/// The kernels callable from Python: the built-ins and those of loaded plugins.
///
/// Kernels are only ever added, and rarely (each [`load_kernels`]), while every call looks
/// one up: each change publishes a new registry that is never freed, so a call reads the
/// current one without a lock or a reference count, and a kernel it runs stays valid.
/// A few kilobytes leak per plugin loaded.
static REGISTRY: AtomicPtr<Registry> = AtomicPtr::new(std::ptr::null_mut());

/// The current registry.
fn registry() -> &'static Registry {
    let current = REGISTRY.load(Ordering::Acquire);
    if !current.is_null() {
        // SAFETY: a non-null pointer was published by `publish` from a leaked Box, which
        // is never freed or changed.
        return unsafe { &*current };
    }
    match update(|_| Ok(())) {
        Ok(registry) => registry,
        Err(_) => unreachable!("a change that does nothing cannot fail"),
    }
}

/// Publishes a copy of the current registry changed by `change`, unless it fails.
fn update(
    change: impl FnOnce(&mut Registry) -> BridgeResult<()>,
) -> BridgeResult<&'static Registry> {
    static WRITER: Mutex<()> = Mutex::new(());
    let _writer = WRITER.lock().unwrap_or_else(PoisonError::into_inner);
    let current = REGISTRY.load(Ordering::Acquire);
    let mut next = if current.is_null() {
        Registry::with_builtins()
    } else {
        // SAFETY: as in `registry`.
        unsafe { &*current }.clone()
    };
    change(&mut next)?;
    let next: &'static Registry = Box::leak(Box::new(next));
    REGISTRY.store(std::ptr::from_ref(next).cast_mut(), Ordering::Release);
    Ok(next)
}

/// The kernel called `name`.
fn kernel(name: &str) -> BridgeResult<&'static Kernel> {
    Ok(registry().get(name)?)
}

/// A copy of the registry as it is now, for a server to run.
pub fn registry_snapshot() -> Registry {
    registry().clone()
}

/// load_kernels(path)
/// --
///
/// Loads the kernel plugin at ``path`` (a shared library built from a Rust crate that uses
/// ``arrowbridge::export_kernels!``) and returns the names of its kernels, which
/// :func:`call` can then run, as can servers started afterwards by :func:`serve`.
///
/// Loading the same library again returns the same names and loads nothing; a library whose
/// kernel names are already taken, or that is not an arrowbridge plugin, raises
/// :class:`PluginError`.
///
/// >>> import arrowbridge
/// >>> arrowbridge.load_kernels("/nonexistent/libmy_kernels.so")
/// Traceback (most recent call last):
/// ...
/// arrowbridge.errors.PluginError: kernel plugin /nonexistent/libmy_kernels.so: cannot load the library: ...
#[pyfunction]
pub fn load_kernels(py: Python<'_>, path: PathBuf) -> BridgeResult<Vec<&'static str>> {
    static LOADED: OnceLock<Mutex<BTreeMap<PathBuf, Vec<&'static str>>>> = OnceLock::new();
    let loaded = LOADED.get_or_init(Default::default);
    no_panic("load_kernels", || {
        py.detach(|| -> BridgeResult<Vec<&'static str>> {
            let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            let mut loaded = loaded.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(names) = loaded.get(&key) {
                return Ok(names.clone());
            }
            let mut names = Vec::new();
            update(|registry| {
                names = registry.load_plugin(&key)?;
                Ok(())
            })?;
            loaded.insert(key, names.clone());
            Ok(names)
        })
    })
}

/// A keyword parameter of kernel `kernel` as a [`Param`]. NumPy scalars (and 0-d arrays) are
/// taken wherever the Python numbers they hold are.
fn param(kernel: &str, name: &str, value: &Bound<'_, PyAny>) -> BridgeResult<Param> {
    let error = |message: String| Error::Param {
        kernel: kernel.to_string(),
        name: name.to_string(),
        message,
    };
    let int = |v: &Bound<'_, PyAny>| -> BridgeResult<i64> {
        v.extract::<i64>().map_err(|_| {
            let text = v.str().map(|s| s.to_string()).unwrap_or_default();
            error(format!("{text} does not fit in a 64-bit signed integer")).into()
        })
    };
    Ok(if value.is_none() {
        Param::None
    } else if value.is_instance_of::<PyBool>() {
        Param::Bool(value.extract()?)
    } else if value.is_instance_of::<PyInt>() {
        Param::Int(int(value)?)
    } else if value.is_instance_of::<PyFloat>() {
        Param::Float(value.extract()?)
    } else if value.is_instance_of::<PyString>() {
        Param::Str(value.extract()?)
    } else if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
        let items = value
            .try_iter()?
            .map(|item| {
                let item = item?;
                if item.is_instance_of::<PyBool>() || item.is_instance_of::<PyFloat>() {
                    return Err(error(format!("lists must hold ints, got {item}")).into());
                }
                int(&item)
            })
            .collect::<BridgeResult<Vec<_>>>()?;
        Param::Ints(items)
    } else if value.hasattr(intern!(value.py(), "dtype"))?
        && value.hasattr(intern!(value.py(), "item"))?
    {
        let py = value.py();
        let ndim: usize = value
            .getattr(intern!(py, "ndim"))
            .and_then(|n| n.extract())
            .unwrap_or(0);
        if ndim == 1 {
            // A 1-D array of ints is a list of ints (axes, say).
            let kind: String = value
                .getattr(intern!(py, "dtype"))?
                .getattr(intern!(py, "kind"))?
                .extract()?;
            if kind != "i" && kind != "u" {
                let dtype = value.getattr(intern!(py, "dtype"))?.str()?.to_string();
                return Err(error(format!(
                    "a 1-D array of dtype {dtype}; lists must hold ints"
                ))
                .into());
            }
            return param(kernel, name, &value.call_method0(intern!(py, "tolist"))?);
        }
        if ndim > 1 {
            return Err(error(format!(
                "a {ndim}-D array; give a number, or a list or 1-D array of ints"
            ))
            .into());
        }
        // A NumPy scalar or 0-d array: the Python number it holds.
        let item = value.call_method0(intern!(py, "item")).map_err(|_| {
            let type_name = value
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default();
            error(format!("unsupported value of type {type_name}"))
        })?;
        if item.hasattr(intern!(value.py(), "dtype"))? {
            return Err(error(format!(
                "unsupported value of type {}",
                value.get_type().name()?
            ))
            .into());
        }
        param(kernel, name, &item)?
    } else {
        return Err(error(format!(
            "unsupported value of type {}",
            value.get_type().name()?
        ))
        .into());
    })
}

/// The keyword parameters of a call of `kernel`, in process or over Flight (where
/// [`Params::to_json`] carries them on).
pub fn params(kernel: &str, params: Option<&Bound<'_, PyDict>>) -> BridgeResult<Params> {
    match params {
        None => Ok(Params::default()),
        Some(dict) => keyword_params(kernel, dict.iter()),
    }
}

/// The parameters of a call of `kernel` from its keyword arguments' names and values.
fn keyword_params<'py>(
    kernel: &str,
    keywords: impl Iterator<Item = (Bound<'py, PyAny>, Bound<'py, PyAny>)>,
) -> BridgeResult<Params> {
    let mut params = Params::with_capacity(keywords.size_hint().0);
    for (name, value) in keywords {
        let name: String = name.extract()?;
        let value = param(kernel, &name, &value)?;
        params.insert(name, value);
    }
    Ok(params)
}

/// A kernel input, and whether it views the NumPy array `obj` in place.
fn kernel_input(obj: &Bound<'_, PyAny>) -> BridgeResult<(ArrowTensor, bool)> {
    if let Ok(array) = obj.cast::<PyUntypedArray>() {
        let tensor = tensor_from_numpy(array, Want::AnyBlock, None, None, Realign::Never)?;
        let in_place = tensor.data_ptr() as usize == data_address(array);
        return Ok((tensor, in_place));
    }
    match protocol(obj)? {
        Protocol::DLPack => {
            // Viewed in place through a NumPy array of its own, in any axis order.
            let array = dlpack_numpy(obj)?;
            let tensor = tensor_from_numpy(&array, Want::AnyBlock, None, None, Realign::Never)?;
            Ok((tensor, false))
        }
        other => Ok((read_tensor(obj, other, Want::Rows, None)?, false)),
    }
}

fn overlaps(a: &ArrowTensor, b: &ArrowTensor) -> bool {
    let (a0, b0) = (a.data_ptr() as usize, b.data_ptr() as usize);
    a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes()
}

/// `call`'s docstring; CPython reads `__text_signature__` from its first lines.
const CALL_DOC: &CStr = c"call(kernel, /, *arrays, **params)
--

Runs the registered Rust kernel `kernel` on `arrays` and returns its result.

Inputs may be NumPy arrays (a contiguous block in any axis order reaches the kernel
without a copy, as a view with the same strides; other layouts are copied first), pyarrow
arrays, or any object with ``__arrow_c_array__`` or ``__arrow_c_stream__``. Outputs are
NumPy arrays over Rust-owned memory (no copy); an output that shares an input's memory is
read-only. The GIL is released while the kernel runs (for inputs of 64 KiB or more, unless
the kernel declares that its time does not grow with its inputs). One output is returned as
an array, several as a tuple.

>>> import numpy as np, arrowbridge
>>> arrowbridge.call(\"sum\", np.arange(6.0).reshape(2, 3), axis=1)
array([ 3., 12.])
>>> x = np.ones((2, 3), order=\"F\")
>>> np.shares_memory(arrowbridge.call(\"identity\", x), x)
True
";

/// Kernel calls rarely pass more arrays or parameters than this; more spill to the heap.
type Few<T> = SmallVec<[T; 4]>;

/// The `call` function object. It is written against CPython's vectorcall convention
/// (`METH_FASTCALL | METH_KEYWORDS`) by hand: PyO3 receives `*args, **kwargs` as a new tuple
/// and dict, which cost as much as everything else a built-in kernel's call does.
pub fn function<'py>(module: &Bound<'py, PyModule>) -> PyResult<Bound<'py, PyAny>> {
    let def = Box::leak(Box::new(ffi::PyMethodDef {
        ml_name: c"call".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: call_vectorcall,
        },
        ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
        ml_doc: CALL_DOC.as_ptr(),
    }));
    let name = module.name()?;
    // SAFETY: `def` is leaked, so it outlives the function object, as CPython requires;
    // PyCFunction_NewEx returns a new reference, or NULL with an exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            module.py(),
            ffi::PyCFunction_NewEx(def, module.as_ptr(), name.as_ptr()),
        )
    }
}

/// CPython's entry into `call`: `args` holds `nargs` positional arguments followed by one
/// value per name in the `kwnames` tuple (NULL when there are no keywords).
unsafe extern "C" fn call_vectorcall(
    _module: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls functions from a thread attached to the interpreter.
    let py = unsafe { Python::assume_attached() };
    let result = no_panic("call", || {
        // SAFETY: `kwnames` is NULL or a tuple of str (the vectorcall protocol).
        let names = unsafe { Borrowed::from_ptr_or_opt(py, kwnames) }
            // SAFETY: a tuple, per the protocol.
            .map(|n| unsafe { n.cast_unchecked::<PyTuple>() });
        let nkw = names.as_ref().map_or(0, |n| n.len());
        // SAFETY: the vectorcall protocol: `args` holds `nargs + nkw` borrowed references,
        // alive for this call.
        let args = unsafe { std::slice::from_raw_parts(args, nargs as usize + nkw) };
        let (positional, values) = args.split_at(nargs as usize);
        // SAFETY: each is a valid borrowed reference (above).
        let arg = |ptr: &*mut ffi::PyObject| unsafe { Borrowed::from_ptr(py, *ptr) };
        let Some((kernel, arrays)) = positional.split_first() else {
            return Err(
                PyTypeError::new_err("call() missing its first argument, the kernel name").into(),
            );
        };
        let kernel = arg(kernel);
        let kernel = kernel.cast::<PyString>().map_err(|_| {
            PyTypeError::new_err(format!(
                "call(): the kernel name must be a str, not {}",
                kernel
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
        // One name per value, so the iterator knows its length (Params allocates once).
        let keywords = values.iter().enumerate().map(|(i, value)| {
            let names = names.as_ref().expect("keyword values come with kwnames");
            // SAFETY: `i < nkw`, the tuple's length.
            let name = unsafe { names.get_borrowed_item_unchecked(i) };
            (name.to_owned(), arg(value).to_owned())
        });
        call(py, kernel.to_str()?, arrays.iter().map(arg), keywords)
    });
    match result {
        Ok(out) => out.into_ptr(),
        Err(error) => {
            PyErr::from(error).restore(py);
            std::ptr::null_mut()
        }
    }
}

/// Runs kernel `name` on `arrays` with the keyword parameters `keywords`.
fn call<'a, 'py: 'a>(
    py: Python<'py>,
    name: &str,
    mut arrays: impl ExactSizeIterator<Item = Borrowed<'a, 'py, PyAny>>,
    keywords: impl Iterator<Item = (Bound<'py, PyAny>, Bound<'py, PyAny>)>,
) -> BridgeResult<Bound<'py, PyAny>> {
    let kernel = self::kernel(name)?;
    if kernel.ragged {
        if let Some(first) = arrays.next() {
            return call_ragged(py, kernel, &first, arrays, keywords);
        }
    }
    if arrays.len() == 1 {
        // Most calls pass one array: it stays where it is built, not moved into a list.
        let array = arrays.next().expect("one array");
        let (tensor, in_place) = kernel_input(&array)?;
        let params = keyword_params(kernel.name, keywords)?;
        return run(py, kernel, &[tensor], &[in_place.then_some(array)], params);
    }
    let mut inputs = Few::with_capacity(arrays.len());
    let mut owners = Few::with_capacity(arrays.len());
    for array in arrays {
        let (tensor, in_place) = kernel_input(&array)?;
        inputs.push(tensor);
        owners.push(in_place.then_some(array));
    }
    let params = keyword_params(kernel.name, keywords)?;
    run(py, kernel, &inputs, &owners, params)
}

/// Runs a ragged kernel: `first` (a list of arrays, or an Arrow producer of
/// `arrow.variable_shape_tensor`) reaches it as two arrays, its values and its rows' shapes;
/// a NumPy array `first` is taken as the values already (the shapes follow it).
fn call_ragged<'a, 'py: 'a>(
    py: Python<'py>,
    kernel: &Kernel,
    first: &Borrowed<'a, 'py, PyAny>,
    rest: impl ExactSizeIterator<Item = Borrowed<'a, 'py, PyAny>>,
    keywords: impl Iterator<Item = (Bound<'py, PyAny>, Bound<'py, PyAny>)>,
) -> BridgeResult<Bound<'py, PyAny>> {
    let mut inputs: Few<ArrowTensor> = Few::with_capacity(rest.len() + 2);
    let mut owners = Few::with_capacity(rest.len() + 2);
    let ragged_input = first.cast::<PyList>().is_ok()
        || matches!(
            protocol(first)?,
            Protocol::ArrowArray | Protocol::ArrowStream
        );
    if ragged_input {
        let ragged = read_ragged(first, true)?;
        inputs.extend(ragged.to_kernel_args()?);
        owners.extend([None, None]);
    } else {
        let (tensor, in_place) = kernel_input(first)?;
        inputs.push(tensor);
        owners.push(in_place.then_some(*first));
    }
    for array in rest {
        let (tensor, in_place) = kernel_input(&array)?;
        inputs.push(tensor);
        owners.push(in_place.then_some(array));
    }
    let params = keyword_params(kernel.name, keywords)?;
    run(py, kernel, &inputs, &owners, params)
}

/// Runs `kernel` on `inputs`; `owners[i]` is the NumPy array input `i` views in place.
fn run<'py>(
    py: Python<'py>,
    kernel: &Kernel,
    inputs: &[ArrowTensor],
    owners: &[Option<Borrowed<'_, 'py, PyAny>>],
    params: Params,
) -> BridgeResult<Bound<'py, PyAny>> {
    // Like NumPy, keep the GIL for work too small to amortize releasing it.
    let work: usize = inputs.iter().map(ArrowTensor::nbytes).sum();
    let outputs = if work >= RELEASE_GIL_BYTES && !kernel.constant_time {
        py.detach(|| kernel.call(inputs, params))?
    } else {
        kernel.call(inputs, params)?
    };
    let numpy = |out: ArrowTensor| {
        // An output inside an input's memory is a read-only view; when that input is a
        // NumPy array viewed in place, the array itself is the base (as NumPy's own views
        // do), otherwise the Arrow buffer is.
        match inputs
            .iter()
            .zip(owners)
            .find(|(input, _)| overlaps(&out, input))
        {
            Some((_, Some(owner))) => {
                tensor_to_numpy_with_base(py, &out, false, (*owner).to_owned())
            }
            Some((_, None)) => tensor_into_numpy(py, out, false),
            None => tensor_into_numpy(py, out, true),
        }
    };
    if outputs.len() == 1 {
        return numpy(outputs.into_iter().next().expect("one output"));
    }
    let results = outputs
        .into_iter()
        .map(numpy)
        .collect::<BridgeResult<Few<_>>>()?;
    Ok(PyTuple::new(py, results)?.into_any())
}

/// kernels()
/// --
///
/// The registered kernels: a dict from name to signature.
///
/// >>> import arrowbridge
/// >>> {"add", "identity", "matmul", "normalize", "pad", "ragged_sum", "sum"} <= set(arrowbridge.kernels())
/// True
/// >>> arrowbridge.kernels()["sum"]
/// 'sum(x: numeric[...], axis: int | None = None) -> numeric[...]'
#[pyfunction]
pub fn kernels(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    // Read under the lock, build the dict (which may run Python code) after it.
    let dict = PyDict::new(py);
    for kernel in registry().iter() {
        dict.set_item(kernel.name, kernel.signature)?;
    }
    Ok(dict)
}
