//! `to_arrow` and `to_numpy`: NumPy ⇄ Arrow through the C Data Interface.

use numpy::PyUntypedArray;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use arrowbridge_pyo3::internal::capsule::{
    export_tensor, import_c_array, import_c_stream, imported_tensor,
};
use arrowbridge_pyo3::internal::input::{dlpack_numpy, protocol, read_tensor, Protocol};
use arrowbridge_pyo3::internal::numpy_input::{tensor_from_numpy, CopyPolicy, Realign, Want};
use arrowbridge_pyo3::internal::numpy_output::tensor_to_numpy;
use arrowbridge_pyo3::internal::ragged::{is_ragged, ragged_chunks, rows_to_numpy};
use arrowbridge_pyo3::{no_panic, BridgeResult};

/// Exports a NumPy array as the (schema, array) capsules of an Arrow array.
#[pyfunction]
#[pyo3(signature = (array, *, dim_names=None, copy=None, whole=false, name=""))]
pub fn export_array<'py>(
    array: &Bound<'py, PyUntypedArray>,
    dim_names: Option<Vec<String>>,
    copy: CopyPolicy,
    whole: bool,
    name: &str,
) -> BridgeResult<Bound<'py, PyTuple>> {
    no_panic("to_arrow", || {
        let want = if whole { Want::Element } else { Want::Rows };
        let tensor = tensor_from_numpy(array, want, copy, dim_names, Realign::IfCopyAllowed)?;
        export_tensor(array.py(), &tensor, name)
    })
}

/// Converts NumPy arrays, pyarrow arrays and any Arrow PyCapsule producer to a NumPy array
/// (a list of them for an `arrow.variable_shape_tensor`).
#[pyfunction]
#[pyo3(signature = (obj, *, copy=None))]
pub fn to_numpy<'py>(obj: &Bound<'py, PyAny>, copy: CopyPolicy) -> BridgeResult<Bound<'py, PyAny>> {
    no_panic("to_numpy", || {
        let py = obj.py();
        // NumPy arrays as they are, DLPack tensors as NumPy views of their memory.
        let protocol = protocol(obj)?;
        let numpy = match protocol {
            Protocol::Numpy => Some(obj.cast::<PyUntypedArray>()?.clone()),
            Protocol::DLPack => Some(dlpack_numpy(obj)?),
            _ => None,
        };
        if let Some(array) = numpy {
            return Ok(if copy == Some(true) {
                arrowbridge_pyo3::internal::numpy_input::c_order_copy(&array)?.into_any()
            } else {
                array.into_any()
            });
        }
        let allow_copy = copy != Some(false);
        let imported = match protocol {
            Protocol::ArrowArray => Some(import_c_array(obj, allow_copy)?),
            Protocol::ArrowStream => Some(import_c_stream(obj, allow_copy)?),
            _ => None,
        };
        let tensor = match imported {
            // A variable-shape tensor is a list of arrays, one per row.
            Some(imported) if is_ragged(&imported) => {
                let parts = ragged_chunks(imported, allow_copy)?;
                return Ok(rows_to_numpy(py, &parts, copy == Some(true))?.into_any());
            }
            Some(imported) => imported_tensor(imported, allow_copy)?,
            None => read_tensor(obj, protocol, Want::Rows, copy)?,
        };
        let array = tensor_to_numpy(py, &tensor, false)?;
        Ok(if copy == Some(true) {
            arrowbridge_pyo3::internal::numpy_input::c_order_copy(array.cast::<PyUntypedArray>()?)?
                .into_any()
        } else {
            array
        })
    })
}
