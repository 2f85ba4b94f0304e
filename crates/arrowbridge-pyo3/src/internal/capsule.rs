//! The Arrow PyCapsule interface: importing from and exporting to any Arrow producer or
//! consumer (pyarrow, polars, duckdb, nanoarrow, arro3, …).

use std::ffi::CStr;

use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::ffi_stream::{FFI_ArrowArrayStream, RecordBatchStreamReader};
use arrow_data::ArrayData;
use arrow_schema::{DataType, Field};
use arrowbridge::{ArrowTensor, Error};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyCapsuleMethods, PyTuple};

use crate::errors::BridgeResult;

const SCHEMA: &CStr = c"arrow_schema";
const ARRAY: &CStr = c"arrow_array";
const STREAM: &CStr = c"arrow_array_stream";

/// Arrow data imported from a producer, with the field that describes it.
pub struct Imported {
    pub field: Field,
    pub chunks: Vec<ArrayData>,
}

fn capsule_pointer<T>(capsule: &Bound<'_, PyAny>, name: &CStr) -> PyResult<*mut T> {
    let capsule = capsule.cast::<PyCapsule>()?;
    Ok(capsule.pointer_checked(Some(name))?.as_ptr().cast())
}

/// Imports an object that has `__arrow_c_array__`.
pub fn import_c_array(obj: &Bound<'_, PyAny>, allow_copy: bool) -> BridgeResult<Imported> {
    let tuple = obj.call_method0(intern!(obj.py(), "__arrow_c_array__"))?;
    let tuple = tuple.cast::<PyTuple>()?;
    let schema_ptr = capsule_pointer::<FFI_ArrowSchema>(&tuple.get_item(0)?, SCHEMA)?;
    let array_ptr = capsule_pointer::<FFI_ArrowArray>(&tuple.get_item(1)?, ARRAY)?;
    // SAFETY: a live "arrow_schema" capsule points to a valid ArrowSchema it owns.
    let schema = unsafe { &*schema_ptr };
    let field = Field::try_from(schema)?;
    // SAFETY: a live "arrow_array" capsule points to a valid ArrowArray matching the schema.
    let data = unsafe { arrowbridge::ffi::import_array(array_ptr, schema, &field, allow_copy) }?;
    Ok(Imported {
        field,
        chunks: vec![data],
    })
}

/// Imports every chunk of an object that has `__arrow_c_stream__`.
pub fn import_c_stream(obj: &Bound<'_, PyAny>, allow_copy: bool) -> BridgeResult<Imported> {
    let capsule = obj.call_method0(intern!(obj.py(), "__arrow_c_stream__"))?;
    let stream_ptr = capsule_pointer::<FFI_ArrowArrayStream>(&capsule, STREAM)?;
    // SAFETY: a live "arrow_array_stream" capsule points to a valid stream; from_raw moves it
    // out, so dropping `stream` releases it and the capsule's destructor sees it released.
    let mut stream = unsafe { FFI_ArrowArrayStream::from_raw(stream_ptr) };
    let stream_error = |stream: &mut FFI_ArrowArrayStream, code: i32| -> Error {
        let message = stream
            .get_last_error()
            // SAFETY: get_last_error is called on the stream it belongs to; the string it
            // returns is valid until the next call on the stream.
            .map(|f| unsafe { f(stream) })
            .filter(|p| !p.is_null())
            // SAFETY: a non-null error is a NUL-terminated string owned by the producer.
            .map(|p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
            .unwrap_or_default();
        Error::invalid(
            "Arrow stream",
            format!("producer failed with code {code}: {message}"),
        )
    };
    let mut schema = FFI_ArrowSchema::empty();
    let get_schema = stream
        .get_schema()
        .ok_or_else(|| Error::invalid("Arrow stream", "released stream"))?;
    // SAFETY: the callback belongs to this stream and writes a schema into `schema`.
    let code = unsafe { get_schema(&mut stream, &mut schema) };
    if code != 0 {
        return Err(stream_error(&mut stream, code).into());
    }
    let field = Field::try_from(&schema)?;
    let get_next = stream
        .get_next()
        .ok_or_else(|| Error::invalid("Arrow stream", "released stream"))?;
    let mut chunks = Vec::new();
    loop {
        let mut array = FFI_ArrowArray::empty();
        // SAFETY: the callback belongs to this stream and writes an array into `array`.
        let code = unsafe { get_next(&mut stream, &mut array) };
        if code != 0 {
            return Err(stream_error(&mut stream, code).into());
        }
        if array.is_released() {
            break;
        }
        // SAFETY: the stream produced `array` for `schema`.
        chunks.push(unsafe {
            arrowbridge::ffi::import_array(&mut array, &schema, &field, allow_copy)
        }?);
    }
    Ok(Imported { field, chunks })
}

/// Exports `tensor` as the (schema, array) capsule pair of the PyCapsule interface.
pub fn export_tensor<'py>(
    py: Python<'py>,
    tensor: &ArrowTensor,
    name: &str,
) -> BridgeResult<Bound<'py, PyTuple>> {
    let schema = FFI_ArrowSchema::try_from(&tensor.field(name))?;
    let array = FFI_ArrowArray::new(&tensor.data());
    let schema = PyCapsule::new_with_value(py, schema, SCHEMA)?;
    let array = PyCapsule::new_with_value(py, array, ARRAY)?;
    Ok(PyTuple::new(py, [schema, array])?)
}

/// Exports `ragged` as the (schema, array) capsule pair of the PyCapsule interface.
pub fn export_ragged<'py>(
    py: Python<'py>,
    ragged: &arrowbridge::RaggedTensor,
    name: &str,
) -> BridgeResult<Bound<'py, PyTuple>> {
    let schema = FFI_ArrowSchema::try_from(&ragged.field(name))?;
    let array = FFI_ArrowArray::new(&ragged.data());
    let schema = PyCapsule::new_with_value(py, schema, SCHEMA)?;
    let array = PyCapsule::new_with_value(py, array, ARRAY)?;
    Ok(PyTuple::new(py, [schema, array])?)
}

/// A table (a stream of record batches: a duckdb result, a polars DataFrame, a pyarrow Table)
/// of one column is that column; a table of several columns is an error naming them. A
/// struct with an extension type (`arrow.variable_shape_tensor`) is a column, not a table.
pub fn single_column(imported: Imported) -> BridgeResult<Imported> {
    let DataType::Struct(children) = imported.field.data_type() else {
        return Ok(imported);
    };
    if imported
        .field
        .metadata()
        .contains_key(arrowbridge::EXTENSION_NAME_KEY)
    {
        return Ok(imported);
    }
    let [child] = children.as_ref() else {
        let names: Vec<&str> = children.iter().map(|c| c.name().as_str()).collect();
        return Err(Error::UnsupportedType {
            what: format!("field {:?}", imported.field.name()),
            kind: "Arrow type",
            name: format!(
                "a table of {} columns {names:?} (pass one column, e.g. table[{:?}])",
                names.len(),
                names.first().copied().unwrap_or("name")
            ),
        }
        .into());
    };
    let chunks = imported
        .chunks
        .into_iter()
        .map(|chunk| {
            if chunk.null_count() > 0 {
                return Err(Error::Nulls {
                    what: format!("table {:?}", imported.field.name()),
                    count: chunk.null_count(),
                });
            }
            Ok(chunk.child_data()[0].slice(chunk.offset(), chunk.len()))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(Imported {
        field: child.as_ref().clone(),
        chunks,
    })
}

/// Reads imported data as one tensor: one chunk is viewed in place; several are
/// concatenated (a copy), which `allow_copy` must permit.
pub fn imported_tensor(imported: Imported, allow_copy: bool) -> BridgeResult<ArrowTensor> {
    let Imported { field, mut chunks } = single_column(imported)?;
    let data = match chunks.len() {
        1 => chunks.pop().expect("one chunk"),
        0 => arrow_array::new_empty_array(field.data_type()).to_data(),
        n if !allow_copy => {
            return Err(Error::CopyRequired {
                what: format!("field {:?}", field.name()),
                reason: format!("its {n} chunks must be concatenated"),
            }
            .into())
        }
        _ => {
            let arrays: Vec<_> = chunks.into_iter().map(arrow_array::make_array).collect();
            let refs: Vec<&dyn arrow_array::Array> = arrays.iter().map(|a| a.as_ref()).collect();
            arrow_select::concat::concat(&refs)?.to_data()
        }
    };
    Ok(if allow_copy {
        ArrowTensor::from_arrow_unpacking(&field, data)?
    } else {
        ArrowTensor::from_arrow(&field, data)?
    })
}

/// The record batches of an object with `__arrow_c_stream__` whose items are record batches
/// (a pyarrow Table or RecordBatchReader, a polars DataFrame, …).
pub fn import_batch_stream(obj: &Bound<'_, PyAny>) -> BridgeResult<RecordBatchStreamReader> {
    let capsule = obj.call_method0(intern!(obj.py(), "__arrow_c_stream__"))?;
    let ptr = capsule_pointer::<FFI_ArrowArrayStream>(&capsule, STREAM)?;
    // SAFETY: a live "arrow_array_stream" capsule points to a valid stream; from_raw moves it
    // out, leaving a released stream for the capsule's destructor.
    Ok(unsafe { RecordBatchStreamReader::from_raw(ptr) }?)
}
