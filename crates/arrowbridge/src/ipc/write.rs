//! Writing record batches and named tensors in the IPC file and stream formats.

use std::io::Write;
use std::path::Path;

use arrow_array::{Array, RecordBatch};
use arrow_ipc::writer::{FileWriter, IpcWriteOptions, StreamWriter};
use arrow_ipc::{CompressionType, MetadataVersion};
use arrow_schema::Schema;

use crate::error::{Error, Result};
use crate::tensor::ArrowTensor;

use super::*;

fn ipc_options(options: &WriteOptions) -> Result<IpcWriteOptions> {
    let ipc = IpcWriteOptions::try_new(ALIGNMENT, false, MetadataVersion::V5)?;
    Ok(
        ipc.try_with_compression(options.compression.map(|c| match c {
            Compression::Lz4 => CompressionType::LZ4_FRAME,
            Compression::Zstd => CompressionType::ZSTD,
        }))?,
    )
}

/// Writes record batches that share `schema` to `writer` in the IPC format.
pub fn write_batches<W: Write>(
    writer: W,
    schema: &Schema,
    batches: impl IntoIterator<Item = Result<RecordBatch>>,
    options: &WriteOptions,
) -> Result<()> {
    let ipc = ipc_options(options)?;
    check_schema("write_ipc", schema)?;
    let batches = batches
        .into_iter()
        .enumerate()
        .map(|(i, batch)| batch.and_then(|b| check_batch(schema, i, b)));
    match options.format {
        IpcFormat::File => {
            let mut w = FileWriter::try_new_with_options(writer, schema, ipc)?;
            for batch in batches {
                w.write(&batch?)?;
            }
            w.finish()?;
        }
        IpcFormat::Stream => {
            let mut w = StreamWriter::try_new_with_options(writer, schema, ipc)?;
            for batch in batches {
                w.write(&batch?)?;
            }
            w.finish()?;
        }
    }
    Ok(())
}

/// Checks that batch `index` has the columns and types of `schema`: a stream whose producer
/// sends a batch of another type would otherwise be written as bytes of the wrong type.
fn check_batch(schema: &Schema, index: usize, batch: RecordBatch) -> Result<RecordBatch> {
    let given = batch.schema();
    if given.fields().len() != schema.fields().len() {
        return Err(Error::invalid(
            format!("batch {index}"),
            format!(
                "has {} columns, the schema {}",
                given.fields().len(),
                schema.fields().len()
            ),
        ));
    }
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        if column.data_type() != field.data_type() {
            return Err(Error::invalid(
                format!("batch {index}"),
                format!(
                    "column {:?} is {}, the schema says {}",
                    field.name(),
                    column.data_type(),
                    field.data_type()
                ),
            ));
        }
    }
    Ok(batch)
}

/// Writes named tensors to an IPC file or stream at `path`, atomically (see
/// [`record_batch`] for how they are laid out).
pub fn write_ipc(
    path: &Path,
    columns: &[(&str, &ArrowTensor)],
    options: &WriteOptions,
) -> Result<()> {
    write_batch(path, &record_batch(columns)?, options)
}

/// Writes one record batch to an IPC file or stream at `path`, atomically.
pub fn write_batch(path: &Path, batch: &RecordBatch, options: &WriteOptions) -> Result<()> {
    write_atomically(path, |w| {
        write_batches(w, batch.schema().as_ref(), [Ok(batch.clone())], options)
    })
}
