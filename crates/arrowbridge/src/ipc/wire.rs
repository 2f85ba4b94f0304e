//! Record batches cut to fit a transport's messages (Flight's): slices of rows, or columns
//! laid out flat.

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Schema, SchemaRef};

use crate::error::{Error, Result};
use crate::tensor::{ArrowTensor, Form};

use super::*;

/// Rows of about this many bytes when columns are laid out flat for a transport.
const FLAT_ROW_BYTES: usize = 64 << 10;

/// Record batches that carry `columns` through a transport whose messages hold at most
/// `max_bytes` each (a gRPC message): the batch of [`record_batch`], cut into slices of
/// rows, when one row fits in a message; otherwise every column laid out *flat*.
///
/// Flat, a column of `n` elements of any shape is a `[rows, k]` tensor of its elements in C
/// order, zero-padded to `rows × k`, with `rows` the same for every column and chosen so that
/// a row is about 64 KiB; its field is marked `arrowbridge.form = flat` and
/// `arrowbridge.shape` holds the array's shape, from which the readers ([`tensors_of`], [`read_ipc`]) restore it. So
/// arguments of different first-axis lengths, and single rows larger than a message, travel
/// in messages of at most `max_bytes`. Laying out is a copy unless a column's elements
/// already fill its rows in C order.
pub fn wire_batches(
    columns: &[(&str, &ArrowTensor)],
    max_bytes: usize,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let batch = record_batch(columns)?;
    let rows = batch.num_rows().max(1);
    let total: usize = columns.iter().map(|(_, t)| t.nbytes()).sum();
    let row_bytes = total.div_ceil(rows);
    if row_bytes <= max_bytes {
        let batch = announced(batch)?;
        return Ok((batch.schema(), slices(&batch, row_bytes, max_bytes)));
    }
    let rows = total.div_ceil(FLAT_ROW_BYTES.min(max_bytes)).max(1);
    let mut fields = Vec::with_capacity(columns.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    for (name, tensor) in columns {
        let flat = flat_tensor(tensor, rows)?;
        let mut metadata = flat.field(name).metadata().clone();
        metadata.insert(FORM_KEY.to_string(), "flat".to_string());
        metadata.insert(
            SHAPE_KEY.to_string(),
            serde_json::to_string(tensor.shape()).expect("a shape is serializable"),
        );
        fields.push(flat.field(name).with_metadata(metadata));
        arrays.push(flat.array());
    }
    let flat = announced(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)?;
    let row_bytes: usize = columns
        .iter()
        .map(|(_, t)| t.len().div_ceil(rows).max(1) * t.dtype().itemsize())
        .sum();
    Ok((flat.schema(), slices(&flat, row_bytes, max_bytes)))
}

/// `batch` with its row count announced in its schema ([`crate::landing::ROWS_KEY`]), so
/// that a receiver can allocate every column once.
fn announced(batch: RecordBatch) -> Result<RecordBatch> {
    let schema = crate::landing::announcing(&batch.schema(), batch.num_rows());
    Ok(batch.with_schema(Arc::new(schema))?)
}

/// `batch` cut into slices of whole rows of at most `max_bytes` (one row per slice at least).
/// Messages are counted in bytes, not rows: rows of zero bytes all travel in one slice.
fn slices(batch: &RecordBatch, row_bytes: usize, max_bytes: usize) -> Vec<RecordBatch> {
    let step = rows_per_message(row_bytes, max_bytes);
    if batch.num_rows() <= step {
        return vec![batch.clone()];
    }
    (0..batch.num_rows())
        .step_by(step)
        .map(|start| batch.slice(start, step.min(batch.num_rows() - start)))
        .collect()
}

/// How many rows of `row_bytes` bytes one message of at most `max_bytes` carries: one at
/// least, and every row when rows take no bytes (`np.empty((2**62, 0))` is one message,
/// not 2^39).
pub fn rows_per_message(row_bytes: usize, max_bytes: usize) -> usize {
    match row_bytes {
        0 => usize::MAX,
        width => (max_bytes / width).max(1),
    }
}

/// `tensor`'s elements in C order as a `[rows, k]` tensor, zero-padded to `rows × k`.
fn flat_tensor(tensor: &ArrowTensor, rows: usize) -> Result<ArrowTensor> {
    let dtype = tensor.dtype();
    let k = tensor.len().div_ceil(rows).max(1);
    let identity = tensor.axis_order().iter().enumerate().all(|(i, &a)| i == a);
    let shape = [rows, k];
    if identity && tensor.len() == rows * k {
        return ArrowTensor::from_buffer(
            tensor.values().clone(),
            dtype,
            &shape,
            &[0, 1],
            Form::Rows,
            None,
        );
    }
    let bytes = rows
        .checked_mul(k)
        .and_then(|n| n.checked_mul(dtype.itemsize()))
        .ok_or_else(|| Error::invalid("flat layout", "the padded size overflows usize"))?;
    crate::memory::check_allocation("flat layout", bytes as u64)?;
    let mut buffer = arrow_buffer::MutableBuffer::from_len_zeroed(bytes);
    tensor.write_c_order(&mut buffer.as_slice_mut()[..tensor.nbytes()]);
    ArrowTensor::from_buffer(buffer.into(), dtype, &shape, &[0, 1], Form::Rows, None)
}
