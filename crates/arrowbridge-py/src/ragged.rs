//! Ragged data (`arrow.variable_shape_tensor`) from and to Python: `to_arrow(list)`,
//! `variable_shape_tensor(values, shapes)` and `to_numpy(..., ragged=True)`.

use numpy::{PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use arrowbridge::{Error, RaggedMetadata, RaggedTensor};
use arrowbridge_pyo3::internal::capsule::export_ragged;
use arrowbridge_pyo3::internal::input::input_tensor;
use arrowbridge_pyo3::internal::numpy_input::{c_order_copy, CopyPolicy, Want};
use arrowbridge_pyo3::internal::ragged::{parts_to_numpy, ragged_from_list, read_ragged};
use arrowbridge_pyo3::{no_panic, BridgeResult};

/// Copies a list of arrays of one dtype and rank into one `arrow.variable_shape_tensor` and
/// exports it as the (schema, array) capsules of an Arrow array.
#[pyfunction]
#[pyo3(signature = (arrays, *, dim_names=None, name=""))]
pub fn export_ragged_list<'py>(
    arrays: &Bound<'py, PyList>,
    dim_names: Option<Vec<String>>,
    name: &str,
) -> BridgeResult<Bound<'py, PyTuple>> {
    no_panic("to_arrow", || {
        let ragged = ragged_from_list(arrays, dim_names)?;
        export_ragged(arrays.py(), &ragged, name)
    })
}

/// Wraps flat `values` and an `(n, ndim)` int64 array of physical shapes as an
/// `arrow.variable_shape_tensor` without copying the values, and exports it as capsules.
#[pyfunction]
#[pyo3(signature = (values, shapes, *, dim_names=None, uniform_shape=None, permutation=None, copy=None, name=""))]
#[allow(clippy::too_many_arguments)]
pub fn export_ragged_parts<'py>(
    values: &Bound<'py, PyAny>,
    shapes: PyReadonlyArrayDyn<'py, i64>,
    dim_names: Option<Vec<String>>,
    uniform_shape: Option<Vec<Option<i32>>>,
    permutation: Option<Vec<usize>>,
    copy: CopyPolicy,
    name: &str,
) -> BridgeResult<Bound<'py, PyTuple>> {
    no_panic("variable_shape_tensor", || {
        let ndim = match shapes.shape() {
            [_] => 1,
            [_, ndim] => *ndim,
            other => {
                return Err(Error::shape(
                    "shapes",
                    format!(
                    "shape {other:?}; give an (n, ndim) array of row shapes (or (n,) row lengths)"
                ),
                )
                .into())
            }
        };
        let flat: Vec<i64> = shapes.as_array().iter().copied().collect();
        let values = input_tensor(values, Want::Rows, copy)?;
        let meta = RaggedMetadata {
            dim_names,
            permutation,
            uniform_shape,
        };
        let ragged = RaggedTensor::from_parts(values, &flat, ndim, meta)?;
        export_ragged(shapes.py(), &ragged, name)
    })
}

/// `(values, shapes)` of ragged data: a list of arrays (copied into one buffer) or an Arrow
/// producer of `arrow.variable_shape_tensor` (views).
#[pyfunction]
#[pyo3(signature = (obj, *, copy=None))]
pub fn ragged_parts<'py>(
    obj: &Bound<'py, PyAny>,
    copy: CopyPolicy,
) -> BridgeResult<Bound<'py, PyTuple>> {
    no_panic("to_numpy", || {
        let py = obj.py();
        let ragged = read_ragged(obj, copy != Some(false))?;
        let parts = parts_to_numpy(py, &ragged)?;
        if copy != Some(true) {
            return Ok(parts);
        }
        let copies = parts
            .iter()
            .map(|a| Ok(c_order_copy(a.cast::<PyUntypedArray>()?)?.into_any()))
            .collect::<BridgeResult<Vec<_>>>()?;
        Ok(PyTuple::new(py, copies)?)
    })
}
