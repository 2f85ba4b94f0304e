//! The Arrow PyCapsule interface: importing from and exporting to any Arrow producer or
//! consumer (pyarrow, polars, duckdb, nanoarrow, arro3, …).

use std::ffi::CStr;

use arrow_array::ffi::{from_ffi, FFI_ArrowArray, FFI_ArrowSchema};
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

/// The child types an array of `data_type` has.
fn child_types(data_type: &DataType) -> Vec<&DataType> {
    match data_type {
        DataType::FixedSizeList(f, _)
        | DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::Map(f, _) => vec![f.data_type()],
        DataType::Struct(fields) => fields.iter().map(|f| f.data_type()).collect(),
        DataType::Union(fields, _) => fields.iter().map(|(_, f)| f.data_type()).collect(),
        DataType::RunEndEncoded(ends, values) => vec![ends.data_type(), values.data_type()],
        _ => Vec::new(),
    }
}

/// Checks that an exported array has the buffers and children its type has, before arrow-rs
/// reads them: a producer that declares more than it exported would make the import read
/// past its pointer arrays.
fn check_structure(array: &FFI_ArrowArray, data_type: &DataType, what: &str) -> Result<(), Error> {
    let layout = arrow_data::layout(data_type);
    let buffers = layout.buffers.len() + usize::from(layout.can_contain_null_mask);
    let n = array.num_buffers();
    if n != buffers && !(layout.variadic && n > buffers) {
        return Err(Error::invalid(
            what,
            format!("the exported array has {n} buffer(s); a {data_type} array has {buffers}"),
        ));
    }
    let children = child_types(data_type);
    if array.num_children() != children.len() {
        return Err(Error::invalid(
            what,
            format!(
                "the exported array has {} child array(s); a {data_type} array has {}",
                array.num_children(),
                children.len()
            ),
        ));
    }
    for (c, child_type) in children.into_iter().enumerate() {
        check_structure(array.child(c), child_type, what)?;
    }
    Ok(())
}

/// Addresses of every data buffer in an exported array, in the order arrow-rs imports them.
/// Only the buffers and children that `data_type` has are read: a producer's `n_buffers` and
/// `n_children` are not trusted to match the arrays its pointers lead to.
fn buffer_addresses(array: &FFI_ArrowArray, data_type: &DataType, out: &mut Vec<usize>) {
    let buffers = 1 + arrow_data::layout(data_type).buffers.len();
    for i in 1..array.num_buffers().min(buffers) {
        out.push(array.buffer(i) as usize);
    }
    for (c, child_type) in child_types(data_type)
        .into_iter()
        .enumerate()
        .take(array.num_children())
    {
        buffer_addresses(array.child(c), child_type, out);
    }
}

/// (address, length) of every data buffer of imported data, in import order.
fn imported_addresses(data: &ArrayData, out: &mut Vec<(usize, usize)>) {
    for b in data.buffers() {
        out.push((b.as_ptr() as usize, b.len()));
    }
    for c in data.child_data() {
        imported_addresses(c, out);
    }
}

/// Imports one exported array. arrow-rs realigns misaligned buffers by copying them; that
/// copy is reported as [`Error::Misaligned`] unless `allow_copy`.
///
/// # Safety
/// `array` must point to a valid, unreleased `ArrowArray` described by `schema`; it is moved
/// out (and left released).
unsafe fn import_array(
    array: *mut FFI_ArrowArray,
    schema: &FFI_ArrowSchema,
    field: &Field,
    allow_copy: bool,
) -> BridgeResult<ArrayData> {
    // SAFETY: the caller guarantees `array` is valid.
    let exported = unsafe { &*array };
    check_structure(
        exported,
        field.data_type(),
        &format!("field {:?}", field.name()),
    )?;
    let mut before = Vec::new();
    buffer_addresses(exported, field.data_type(), &mut before);
    // SAFETY: as above; from_raw moves the struct out and leaves a released one behind.
    let ffi_array = unsafe { FFI_ArrowArray::from_raw(array) };
    // SAFETY: the producer promises the array matches the schema (C Data Interface).
    let data = unsafe { from_ffi(ffi_array, schema) }?;
    let mut after = Vec::new();
    imported_addresses(&data, &mut after);
    if !allow_copy {
        // An empty buffer may be replaced by any other empty one: nothing was copied.
        if let Some((&address, _)) = before
            .iter()
            .zip(&after)
            .find(|(&b, &(a, len))| len > 0 && b != a)
        {
            let align = data
                .data_type()
                .primitive_width()
                .or_else(|| {
                    data.child_data()
                        .first()
                        .and_then(|c| c.data_type().primitive_width())
                })
                .unwrap_or(8);
            return Err(Error::Misaligned {
                what: format!("field {:?}", field.name()),
                address,
                align,
                misalignment: address % align,
            }
            .into());
        }
    }
    Ok(data)
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
    let data = unsafe { import_array(array_ptr, schema, &field, allow_copy) }?;
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
        chunks.push(unsafe { import_array(&mut array, &schema, &field, allow_copy) }?);
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

/// A table (a stream of record batches: a duckdb result, a polars DataFrame, a pyarrow Table)
/// of one column is that column; a table of several columns is an error naming them.
fn single_column(imported: Imported) -> BridgeResult<Imported> {
    let DataType::Struct(children) = imported.field.data_type() else {
        return Ok(imported);
    };
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
