//! `to_arrow` and `to_numpy`: NumPy ⇄ Arrow through the C Data Interface.

use arrowbridge::{ArrowTensor, Error};
use numpy::PyUntypedArray;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::capsule::{export_tensor, import_c_array, import_c_stream, imported_tensor};
use crate::errors::{no_panic, BridgeResult};
use crate::numpy_input::{tensor_from_numpy, CopyPolicy, Realign, Want};
use crate::numpy_output::tensor_to_numpy;

/// Any array-like input as a tensor: NumPy arrays are wrapped in place (`want` says which
/// layouts), Arrow producers are imported through the PyCapsule interface.
pub fn input_tensor(
    obj: &Bound<'_, PyAny>,
    want: Want,
    copy: CopyPolicy,
) -> BridgeResult<ArrowTensor> {
    let py = obj.py();
    if let Ok(array) = obj.cast::<PyUntypedArray>() {
        return tensor_from_numpy(array, want, copy, None, Realign::IfCopyAllowed);
    }
    let allow_copy = copy != Some(false);
    if obj.hasattr(intern!(py, "__arrow_c_array__"))? {
        imported_tensor(import_c_array(obj, allow_copy)?, allow_copy)
    } else if obj.hasattr(intern!(py, "__arrow_c_stream__"))? {
        imported_tensor(import_c_stream(obj, allow_copy)?, allow_copy)
    } else {
        Err(Error::UnsupportedType {
            what: "input".into(),
            kind: "object type",
            name: format!(
                "{} (expected a numpy.ndarray or an object with __arrow_c_array__ or __arrow_c_stream__)",
                obj.get_type().name()?
            ),
        }
        .into())
    }
}

/// A column of a table to write or send: NumPy arrays in row form (copied into C order when
/// axis 0 is not outermost), Arrow producers as they are.
pub fn column_input(obj: &Bound<'_, PyAny>) -> BridgeResult<ArrowTensor> {
    if let Ok(array) = obj.cast::<PyUntypedArray>() {
        return tensor_from_numpy(array, Want::Rows, None, None, Realign::IfCopyAllowed);
    }
    input_tensor(obj, Want::Rows, None)
}

/// One record batch of named columns (see [`arrowbridge::ipc::record_batch`] for the layout).
pub fn columns_batch(
    names: &[String],
    arrays: &Bound<'_, pyo3::types::PyList>,
) -> BridgeResult<arrow_array::RecordBatch> {
    let tensors = arrays
        .iter()
        .map(|a| column_input(&a))
        .collect::<BridgeResult<Vec<_>>>()?;
    let columns: Vec<(&str, &ArrowTensor)> =
        names.iter().map(String::as_str).zip(&tensors).collect();
    Ok(arrowbridge::ipc::record_batch(&columns)?)
}

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

/// Converts NumPy arrays, pyarrow arrays and any Arrow PyCapsule producer to a NumPy array.
#[pyfunction]
#[pyo3(signature = (obj, *, copy=None))]
pub fn to_numpy<'py>(obj: &Bound<'py, PyAny>, copy: CopyPolicy) -> BridgeResult<Bound<'py, PyAny>> {
    no_panic("to_numpy", || {
        let py = obj.py();
        if let Ok(array) = obj.cast::<PyUntypedArray>() {
            return Ok(if copy == Some(true) {
                crate::numpy_input::c_order_copy(array)?.into_any()
            } else {
                array.clone().into_any()
            });
        }
        let tensor = input_tensor(obj, Want::Rows, copy)?;
        let array = tensor_to_numpy(py, &tensor, false)?;
        Ok(if copy == Some(true) {
            crate::numpy_input::c_order_copy(array.cast::<PyUntypedArray>()?)?.into_any()
        } else {
            array
        })
    })
}

/// The data address of a NumPy array (for tests proving zero-copy).
#[pyfunction]
pub fn data_address(array: &Bound<'_, PyUntypedArray>) -> usize {
    crate::numpy_input::data_address(array)
}
