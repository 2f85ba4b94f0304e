//! Ragged data from and to Python: a list of arrays, or any Arrow producer of
//! `arrow.variable_shape_tensor`, as a [`RaggedTensor`]; its rows as NumPy views.

use arrowbridge::ipc::Column;
use arrowbridge::{is_ragged_field, ArrowTensor, Error, RaggedTensor};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use crate::capsule::{import_c_array, import_c_stream, imported_tensor, single_column, Imported};
use crate::errors::{BridgeError, BridgeResult};
use crate::input::{dlpack_numpy, protocol, read_tensor, Protocol};
use crate::numpy_input::{c_order_copy, tensor_from_numpy, Realign, Want};
use crate::numpy_output::tensor_to_numpy_with_base;
use numpy::PyUntypedArray;

/// Lists whose elements hold at least this many bytes in all are copied with the GIL
/// released.
const RELEASE_GIL_BYTES: usize = 1 << 20;

/// One element of a ragged list as a tensor over its memory (strided NumPy arrays are first
/// copied into C order); `i` names it in errors.
fn element_tensor(obj: &Bound<'_, PyAny>, i: usize) -> BridgeResult<ArrowTensor> {
    let rename = |e: BridgeError| match e {
        BridgeError::Core(Error::UnsupportedType { kind, name, .. }) => {
            BridgeError::Core(Error::UnsupportedType {
                what: format!("ragged list element {i}"),
                kind,
                name,
            })
        }
        other => other,
    };
    match protocol(obj)? {
        Protocol::Numpy => {
            let array = obj.cast::<PyUntypedArray>()?;
            tensor_from_numpy(array, Want::Element, None, None, Realign::IfCopyAllowed)
        }
        Protocol::DLPack => {
            let array = dlpack_numpy(obj)?;
            tensor_from_numpy(&array, Want::Element, None, None, Realign::IfCopyAllowed)
        }
        p @ (Protocol::ArrowArray | Protocol::ArrowStream) => read_tensor(obj, p, Want::Rows, None),
        Protocol::Unknown => {
            let name = obj
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default();
            Err(Error::UnsupportedType {
                what: format!("ragged list element {i}"),
                kind: "object type",
                name: format!(
                    "{name} (a ragged list holds arrays: NumPy arrays, DLPack or Arrow producers)"
                ),
            }
            .into())
        }
    }
    .map_err(rename)
}

/// A list of arrays of one dtype and rank as one [`RaggedTensor`]: one copy of the elements
/// into one 64-byte aligned buffer, `uniform_shape` detected.
pub fn ragged_from_list(
    list: &Bound<'_, PyList>,
    dim_names: Option<Vec<String>>,
) -> BridgeResult<RaggedTensor> {
    let tensors = list
        .iter()
        .enumerate()
        .map(|(i, obj)| element_tensor(&obj, i))
        .collect::<BridgeResult<Vec<_>>>()?;
    let bytes: usize = tensors.iter().map(ArrowTensor::nbytes).sum();
    let ragged = if bytes >= RELEASE_GIL_BYTES {
        list.py()
            .detach(|| RaggedTensor::from_tensors(&tensors, dim_names))?
    } else {
        RaggedTensor::from_tensors(&tensors, dim_names)?
    };
    Ok(ragged)
}

/// A list of arrays of one dtype and rank as one [`RaggedTensor`] part per array, each a
/// view of the array's memory (no copy; a strided array is copied alone), `uniform_shape`
/// detected across them ([`RaggedTensor::views_of`]): for senders that frame the parts
/// where they lie (a Flight put).
pub fn ragged_views_from_list(list: &Bound<'_, PyList>) -> BridgeResult<Vec<RaggedTensor>> {
    let tensors = list
        .iter()
        .enumerate()
        .map(|(i, obj)| element_tensor(&obj, i))
        .collect::<BridgeResult<Vec<_>>>()?;
    Ok(RaggedTensor::views_of(&tensors, None)?)
}

/// [`any_column`], a list of arrays as one part per array, each a view of it
/// ([`ragged_views_from_list`]).
pub fn any_column_views(obj: &Bound<'_, PyAny>) -> BridgeResult<Column> {
    if let Ok(list) = obj.cast::<PyList>() {
        return Ok(Column::Ragged(ragged_views_from_list(list)?));
    }
    any_column(obj)
}

/// Whether imported Arrow data (a column, or a table of one column) is ragged.
pub fn is_ragged(imported: &Imported) -> bool {
    match imported.field.data_type() {
        _ if is_ragged_field(&imported.field) => true,
        arrow_schema::DataType::Struct(children) => {
            children.len() == 1 && is_ragged_field(&children[0])
        }
        _ => false,
    }
}

/// Each chunk of imported ragged data (a column, or a table of one column) as a
/// [`RaggedTensor`], without a copy (bit-packed `bool` is unpacked when `allow_copy`).
pub fn ragged_chunks(imported: Imported, allow_copy: bool) -> BridgeResult<Vec<RaggedTensor>> {
    let Imported { field, chunks } = single_column(imported)?;
    Ok(chunks
        .iter()
        .map(|chunk| RaggedTensor::from_arrow(&field, chunk, allow_copy))
        .collect::<Result<Vec<_>, Error>>()?)
}

/// Any ragged input as one [`RaggedTensor`]: a list of arrays (copied into one buffer), or an
/// Arrow producer of `arrow.variable_shape_tensor` (viewed; several chunks are concatenated,
/// a copy that `allow_copy` must permit).
pub fn read_ragged(obj: &Bound<'_, PyAny>, allow_copy: bool) -> BridgeResult<RaggedTensor> {
    if let Ok(list) = obj.cast::<PyList>() {
        if !allow_copy {
            return Err(Error::CopyRequired {
                what: format!("a list of {} arrays", list.len()),
                reason: "its elements must be copied into one Arrow buffer".into(),
            }
            .into());
        }
        return ragged_from_list(list, None);
    }
    let imported = match protocol(obj)? {
        Protocol::ArrowArray => import_c_array(obj, allow_copy)?,
        Protocol::ArrowStream => import_c_stream(obj, allow_copy)?,
        _ => {
            let name = obj
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default();
            return Err(Error::UnsupportedType {
                what: "ragged input".into(),
                kind: "object type",
                name: format!(
                    "{name} (expected a list of arrays, or an arrow.variable_shape_tensor array)"
                ),
            }
            .into());
        }
    };
    if !is_ragged(&imported) {
        return Err(Error::UnsupportedType {
            what: format!("field {:?}", imported.field.name()),
            kind: "Arrow type",
            name: format!(
                "{} (expected arrow.variable_shape_tensor)",
                imported.field.data_type()
            ),
        }
        .into());
    }
    let chunks = ragged_chunks(imported, allow_copy)?;
    match chunks.len() {
        1 => Ok(chunks.into_iter().next().expect("one chunk")),
        n if !allow_copy && n > 1 => Err(Error::CopyRequired {
            what: "arrow.variable_shape_tensor".into(),
            reason: format!("its {n} chunks must be concatenated"),
        }
        .into()),
        0 => Err(Error::shape("arrow.variable_shape_tensor", "no chunks").into()),
        _ => Ok(RaggedTensor::concat(&chunks)?),
    }
}

/// A column to write or send: ragged data (a list of arrays, or an Arrow producer of
/// `arrow.variable_shape_tensor`) as [`Column::Ragged`], anything else as the tensor
/// [`column_input`](crate::input::column_input) reads.
pub fn any_column(obj: &Bound<'_, PyAny>) -> BridgeResult<Column> {
    if let Ok(list) = obj.cast::<PyList>() {
        return Ok(Column::Ragged(vec![ragged_from_list(list, None)?]));
    }
    let imported = match protocol(obj)? {
        Protocol::ArrowArray => import_c_array(obj, true)?,
        Protocol::ArrowStream => import_c_stream(obj, true)?,
        _ => return Ok(Column::Tensor(crate::input::column_input(obj)?)),
    };
    Ok(if is_ragged(&imported) {
        Column::Ragged(ragged_chunks(imported, true)?)
    } else {
        Column::Tensor(imported_tensor(imported, true)?)
    })
}

/// The rows of `parts` as a list of NumPy arrays: read-only views of the Arrow memory (one
/// base object per part), or owned C-ordered copies when `copy`.
pub fn rows_to_numpy<'py>(
    py: Python<'py>,
    parts: &[RaggedTensor],
    copy: bool,
) -> BridgeResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for part in parts {
        let base = crate::arrow_memory::new(py, part.values().clone())?;
        for i in 0..part.len() {
            let row = part.row_tensor(i)?;
            let view = tensor_to_numpy_with_base(py, &row, false, base.clone())?;
            if copy {
                list.append(c_order_copy(view.cast::<PyUntypedArray>()?)?)?;
            } else {
                list.append(view)?;
            }
        }
    }
    Ok(list)
}

/// `(values, shapes)` of a ragged tensor: its values as one flat array and its rows'
/// physical shapes as an `(n, ndim)` int32 array, both read-only views of the Arrow memory.
pub fn parts_to_numpy<'py>(
    py: Python<'py>,
    ragged: &RaggedTensor,
) -> BridgeResult<Bound<'py, PyTuple>> {
    let values = ragged.values_tensor()?;
    let shapes = ragged.shapes_tensor()?;
    let values = crate::numpy_output::tensor_to_numpy(py, &values, false)?;
    let shapes = crate::numpy_output::tensor_to_numpy(py, &shapes, false)?;
    Ok(PyTuple::new(py, [values, shapes])?)
}
