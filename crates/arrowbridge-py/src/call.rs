//! `call` and `kernels`: running registered Rust kernels on arrays from Python.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock, PoisonError, RwLock};

use arrowbridge::{ArrowTensor, Error, Kernel, Param, Params, Registry};
use numpy::PyUntypedArray;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::convert::input_tensor;
use crate::errors::{no_panic, BridgeResult};
use crate::numpy_input::{data_address, tensor_from_numpy, Realign, Want};
use crate::numpy_output::{tensor_to_numpy, tensor_to_numpy_with_base};

/// Inputs of at least this many bytes are processed with the GIL released.
const RELEASE_GIL_BYTES: usize = 1 << 16;

/// The kernels callable from Python: the built-ins and those of loaded plugins.
fn registry() -> &'static RwLock<Registry> {
    static REGISTRY: OnceLock<RwLock<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| RwLock::new(Registry::with_builtins()))
}

/// The kernel called `name`. The registry is only locked while looking it up, never while a
/// kernel runs.
fn kernel(name: &str) -> BridgeResult<Kernel> {
    let registry = registry().read().unwrap_or_else(PoisonError::into_inner);
    Ok(registry.get(name)?.clone())
}

/// A copy of the registry as it is now, for a server to run.
pub fn registry_snapshot() -> Registry {
    registry()
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
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
            let names = registry()
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .load_plugin(&key)?;
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
        // A NumPy scalar or 0-d array: the Python number it holds.
        let item = value.call_method0(intern!(value.py(), "item"))?;
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
    let Some(dict) = params else {
        return Ok(Params::default());
    };
    Ok(Params::new(
        dict.iter()
            .map(|(k, v)| {
                let name: String = k.extract()?;
                let value = param(kernel, &name, &v)?;
                Ok((name, value))
            })
            .collect::<BridgeResult<Vec<_>>>()?,
    ))
}

/// A kernel input, and the NumPy array it views when it views one without a copy.
fn kernel_input<'py>(
    obj: &Bound<'py, PyAny>,
) -> BridgeResult<(ArrowTensor, Option<Bound<'py, PyAny>>)> {
    if let Ok(array) = obj.cast::<PyUntypedArray>() {
        let tensor = tensor_from_numpy(array, Want::AnyBlock, None, None, Realign::Never)?;
        let direct = (tensor.data_ptr() as usize == data_address(array)).then(|| obj.clone());
        return Ok((tensor, direct));
    }
    Ok((input_tensor(obj, Want::Rows, None)?, None))
}

fn overlaps(a: &ArrowTensor, b: &ArrowTensor) -> bool {
    let (a0, b0) = (a.data_ptr() as usize, b.data_ptr() as usize);
    a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes()
}

/// call(kernel, /, *arrays, **params)
/// --
///
/// Runs the registered Rust kernel `kernel` on `arrays` and returns its result.
///
/// Inputs may be NumPy arrays (a contiguous block in any axis order reaches the kernel
/// without a copy, as a view with the same strides; other layouts are copied first), pyarrow
/// arrays, or any object with ``__arrow_c_array__`` or ``__arrow_c_stream__``. Outputs are
/// NumPy arrays over Rust-owned memory (no copy); an output that shares an input's memory is
/// read-only. The GIL is released while the kernel runs (for inputs of 64 KiB or more). One output is returned as an array,
/// several as a tuple.
///
/// >>> import numpy as np, arrowbridge
/// >>> arrowbridge.call("sum", np.arange(6.0).reshape(2, 3), axis=1)
/// array([ 3., 12.])
/// >>> x = np.ones((2, 3), order="F")
/// >>> np.shares_memory(arrowbridge.call("identity", x), x)
/// True
#[pyfunction]
#[pyo3(signature = (kernel, /, *arrays, **params))]
pub fn call<'py>(
    py: Python<'py>,
    kernel: &str,
    arrays: &Bound<'py, PyTuple>,
    params: Option<&Bound<'py, PyDict>>,
) -> BridgeResult<Bound<'py, PyAny>> {
    no_panic("call", || {
        let kernel = self::kernel(kernel)?;
        let mut inputs = Vec::with_capacity(arrays.len());
        let mut owners = Vec::with_capacity(arrays.len());
        for array in arrays.iter() {
            let (tensor, owner) = kernel_input(&array)?;
            inputs.push(tensor);
            owners.push(owner);
        }
        let params = self::params(kernel.name, params)?;
        // Like NumPy, keep the GIL for work too small to amortize releasing it.
        let work: usize = inputs.iter().map(ArrowTensor::nbytes).sum();
        let outputs = if work >= RELEASE_GIL_BYTES {
            py.detach(|| kernel.call(&inputs, params))?
        } else {
            kernel.call(&inputs, params)?
        };
        let mut results = outputs
            .iter()
            .map(|out| {
                // An output inside an input's memory is a read-only view; when that input is a
                // NumPy array viewed in place, the array itself is the base (as NumPy's own
                // views do), otherwise the Arrow buffer is.
                match inputs
                    .iter()
                    .zip(&owners)
                    .find(|(input, _)| overlaps(out, input))
                {
                    Some((_, Some(owner))) => {
                        tensor_to_numpy_with_base(py, out, false, owner.clone())
                    }
                    Some((_, None)) => tensor_to_numpy(py, out, false),
                    None => tensor_to_numpy(py, out, true),
                }
            })
            .collect::<BridgeResult<Vec<_>>>()?;
        Ok(if results.len() == 1 {
            results.pop().expect("one result")
        } else {
            PyTuple::new(py, results)?.into_any()
        })
    })
}

/// kernels()
/// --
///
/// The registered kernels: a dict from name to signature.
///
/// >>> import arrowbridge
/// >>> {"add", "identity", "matmul", "normalize", "sum"} <= set(arrowbridge.kernels())
/// True
/// >>> arrowbridge.kernels()["sum"]
/// 'sum(x: numeric[...], axis: int | None = None) -> numeric[...]'
#[pyfunction]
pub fn kernels(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    // Read under the lock, build the dict (which may run Python code) after it.
    let pairs: Vec<(&str, &str)> = registry()
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|k| (k.name, k.signature))
        .collect();
    let dict = PyDict::new(py);
    for (name, signature) in pairs {
        dict.set_item(name, signature)?;
    }
    Ok(dict)
}
