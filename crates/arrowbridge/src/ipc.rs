//! Arrow IPC files and streams: named tensors written with 64-byte aligned buffers, read back
//! as views of a memory mapping.
//!
//! ```
//! use arrowbridge::ipc::{read_ipc, write_ipc, WriteOptions};
//! use arrowbridge::ArrowTensor;
//! use ndarray::ArrayD;
//!
//! let dir = std::env::temp_dir().join(format!("arrowbridge-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("example.arrow");
//! let embeddings = ArrowTensor::from_array(ArrayD::from_elem(vec![4, 3], 0.5f32));
//! let labels = ArrowTensor::from_array(ArrayD::from_elem(vec![4], 7i64));
//! write_ipc(&path, &[("embeddings", &embeddings), ("labels", &labels)], &WriteOptions::default())?;
//!
//! let file = read_ipc(&path, true)?;            // memory-mapped
//! let e = file.tensor("embeddings")?;
//! assert_eq!(e.view::<f32>()?.shape(), &[4, 3]); // a view into the mapping
//! assert_eq!(file.tensor("labels")?.view::<i64>()?.sum(), 28);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), arrowbridge::Error>(())
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch, RecordBatchOptions};
use arrow_buffer::Buffer;
use arrow_ipc::reader::{read_footer_length, FileDecoder, StreamDecoder};
use arrow_ipc::writer::{FileWriter, IpcWriteOptions, StreamWriter};
use arrow_ipc::{root_as_footer, CompressionType, MetadataVersion};
use arrow_schema::{Field, Schema, SchemaRef};

use crate::error::{Error, Result};
use crate::tensor::{ArrowTensor, Form};

/// Field metadata key that marks a column holding one whole array in its single row.
pub const FORM_KEY: &str = "arrowbridge.form";
/// Every buffer arrowbridge writes starts at a multiple of this many bytes.
pub const ALIGNMENT: usize = 64;
const MAGIC: &[u8; 6] = b"ARROW1";

/// File (random access, with a footer) or stream (sequential messages).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IpcFormat {
    #[default]
    File,
    Stream,
}

/// Buffer compression of the IPC format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Lz4,
    Zstd,
}

/// How to write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteOptions {
    pub format: IpcFormat,
    pub compression: Option<Compression>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

fn bad_file(path: &Path, message: impl Into<String>) -> Error {
    Error::BadFile {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// One record batch holding `columns`.
///
/// When every tensor has at least one axis and all share the length of axis 0, they become
/// rows of one table (a file of `embeddings` (N, 768) and `labels` (N,) is N rows, as
/// pyarrow, polars and duckdb expect). Otherwise every column holds its whole array in a
/// single row, marked `arrowbridge.form = element`, so that any set of shapes round-trips.
pub fn record_batch(columns: &[(&str, &ArrowTensor)]) -> Result<RecordBatch> {
    let rows = columns
        .first()
        .and_then(|(_, t)| t.shape().first().copied());
    let as_rows = rows.is_some()
        && columns
            .iter()
            .all(|(_, t)| t.form() == Form::Rows && t.shape().first().copied() == rows);
    let mut fields = Vec::with_capacity(columns.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    for (name, tensor) in columns {
        if as_rows {
            fields.push(tensor.field(name));
            arrays.push(tensor.array());
        } else {
            let element = tensor.as_element();
            fields.push(column_field(name, &element));
            arrays.push(element.array());
        }
    }
    let schema = Arc::new(Schema::new(fields));
    let options =
        RecordBatchOptions::new().with_row_count(Some(if as_rows { rows.unwrap_or(0) } else { 1 }));
    Ok(RecordBatch::try_new_with_options(schema, arrays, &options)?)
}

/// The field of a column holding `tensor`: its own [`ArrowTensor::field`], marked
/// `arrowbridge.form = element` when the tensor is one whole element.
pub(crate) fn column_field(name: &str, tensor: &ArrowTensor) -> Field {
    let field = tensor.field(name);
    if tensor.form() == Form::Rows {
        return field;
    }
    let mut metadata = field.metadata().clone();
    metadata.insert(FORM_KEY.to_string(), "element".to_string());
    field.with_metadata(metadata)
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `path` atomically: the data goes to a temporary file in the same directory, is
/// flushed to disk, and is renamed into place, so a crash leaves the previous file intact.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| bad_file(path, "not a file name"))?
        .to_string_lossy();
    let temp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    // Errors name `path`, the file the caller asked for; the temporary file is ours.
    let result = (|| {
        let file = File::create(&temp).map_err(io_error(path))?;
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        write(&mut writer).map_err(|e| match e {
            // The Arrow writer reports a failed write without the file's name.
            Error::Arrow(arrow_schema::ArrowError::IoError(_, source)) => io_error(path)(source),
            other => other,
        })?;
        let file = writer
            .into_inner()
            .map_err(|e| io_error(path)(e.into_error()))?;
        file.sync_all().map_err(io_error(path))?;
        std::fs::rename(&temp, path).map_err(io_error(path))?;
        // Make the rename itself durable.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

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

/// Holds a file mapping alive while Arrow buffers point into it.
struct Mapping(#[allow(dead_code)] memmap2::Mmap);

/// The contents of an IPC file or stream, decoded without copying its buffers.
#[derive(Clone, Debug)]
pub struct IpcData {
    path: PathBuf,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    mapping: Option<(usize, usize)>,
    format: IpcFormat,
}

/// Reads an Arrow IPC file or stream (the format is recognised by its magic bytes).
///
/// With `mmap`, the file is memory-mapped and every uncompressed, aligned buffer is a view
/// into the mapping, which lives as long as any view; without, the file is read into one
/// 64-byte aligned allocation first. Compressed buffers are decompressed (a copy).
pub fn read_ipc(path: &Path, mmap: bool) -> Result<IpcData> {
    let file = File::open(path).map_err(io_error(path))?;
    let len = file.metadata().map_err(io_error(path))?.len() as usize;
    let (buffer, mapping) = if mmap && len > 0 {
        // SAFETY: the mapping is read-only. Another process truncating or rewriting the file
        // while it is mapped is outside what Rust can guard against; arrowbridge's own writers
        // never modify a file in place (they rename a new file over it).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_error(path))?;
        let start = map.as_ptr();
        let range = (start as usize, map.len());
        let ptr = NonNull::new(start as *mut u8).expect("a mapping is never null");
        // SAFETY: `ptr` points to `len` readable bytes that the Arc'd Mapping keeps mapped.
        let buffer =
            unsafe { Buffer::from_custom_allocation(ptr, map.len(), Arc::new(Mapping(map))) };
        (buffer, Some(range))
    } else {
        // One read into one allocation that is not zeroed first. The allocator aligns it to at
        // least 16 bytes, so buffers at 8-byte aligned file offsets stay aligned for every
        // dtype (an unaligned one would be realigned by the decoder, a copy).
        let mut bytes = Vec::with_capacity(len);
        (&file).read_to_end(&mut bytes).map_err(io_error(path))?;
        (Buffer::from_vec(bytes), None)
    };
    decode(path, buffer, mapping)
}

/// Decodes IPC bytes already in memory (`path` only names them in errors).
pub fn decode(path: &Path, buffer: Buffer, mapping: Option<(usize, usize)>) -> Result<IpcData> {
    // A corrupt file must give an error, never a panic, whatever the decoder does with it.
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        if buffer.len() >= 12 && buffer[..6] == MAGIC[..] && buffer[buffer.len() - 6..] == MAGIC[..]
        {
            decode_file(path, &buffer).map(|(s, b)| (s, b, IpcFormat::File))
        } else if buffer.len() >= 6 && buffer[..6] == MAGIC[..] {
            Err(bad_file(
                path,
                "truncated Arrow IPC file (the footer and trailing magic are missing)",
            ))
        } else {
            decode_stream(path, buffer.clone()).map(|(s, b)| (s, b, IpcFormat::Stream))
        }
    }))
    .unwrap_or_else(|panic| {
        let message = crate::error::panic_message(panic.as_ref());
        Err(bad_file(
            path,
            format!("corrupt Arrow IPC data ({message})"),
        ))
    });
    let (schema, batches, format) = decoded?;
    Ok(IpcData {
        path: path.to_path_buf(),
        schema,
        batches,
        mapping,
        format,
    })
}

/// The most memory a buffer may claim to decompress to: this machine's RAM. arrow-ipc
/// allocates the size a compressed buffer declares before decompressing it, and a failed
/// allocation aborts the process, so a corrupt or hostile file must be refused first.
fn decompression_limit() -> u64 {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|info| {
                let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
                let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib * 1024)
            })
            .unwrap_or(1 << 40)
    })
}

/// Checks the declared uncompressed sizes of a message's compressed buffers (see
/// [`decompression_limit`]). `metadata` is the message flatbuffer, `body` its body.
fn check_declared_sizes(path: &Path, metadata: &[u8], body: &[u8]) -> Result<()> {
    let message = arrow_ipc::root_as_message(metadata)
        .map_err(|e| bad_file(path, format!("corrupt message: {e}")))?;
    let batch = match message.header_type() {
        arrow_ipc::MessageHeader::RecordBatch => message.header_as_record_batch(),
        arrow_ipc::MessageHeader::DictionaryBatch => {
            message.header_as_dictionary_batch().and_then(|d| d.data())
        }
        _ => None,
    };
    let Some(batch) = batch else { return Ok(()) };
    if batch.compression().is_none() {
        return Ok(());
    }
    let limit = decompression_limit();
    let mut total = 0u64;
    for b in batch.buffers().iter().flatten() {
        if b.length() == 0 {
            continue;
        }
        let start = usize::try_from(b.offset()).ok();
        let prefix = start
            .and_then(|s| body.get(s..s.checked_add(8)?))
            .ok_or_else(|| {
                bad_file(
                    path,
                    format!(
                        "a compressed buffer at body offset {} lies outside the message body",
                        b.offset()
                    ),
                )
            })?;
        let declared = i64::from_le_bytes(prefix.try_into().expect("8 bytes"));
        if declared == -1 {
            continue; // stored uncompressed
        }
        total = total.saturating_add(u64::try_from(declared).unwrap_or(u64::MAX));
        if declared < 0 || total > limit {
            return Err(bad_file(
                path,
                format!("a compressed buffer declares {declared} bytes uncompressed; more than this machine's {limit} bytes of memory"),
            ));
        }
    }
    Ok(())
}

/// The (metadata, body) of each message of an IPC stream, with their bounds checked.
fn stream_messages<'a>(path: &Path, mut bytes: &'a [u8]) -> Result<Vec<(&'a [u8], &'a [u8])>> {
    let mut messages = Vec::new();
    let truncated = || bad_file(path, "truncated Arrow IPC message");
    while bytes.len() >= 4 {
        let mut len = i32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
        let mut header = 4;
        if len == -1 {
            len = i32::from_le_bytes(
                bytes
                    .get(4..8)
                    .ok_or_else(truncated)?
                    .try_into()
                    .expect("4 bytes"),
            );
            header = 8;
        }
        if len == 0 {
            break; // end of stream
        }
        let len = usize::try_from(len)
            .map_err(|_| bad_file(path, format!("negative message length {len}")))?;
        let metadata = bytes.get(header..header + len).ok_or_else(truncated)?;
        let message = arrow_ipc::root_as_message(metadata)
            .map_err(|e| bad_file(path, format!("corrupt message: {e}")))?;
        let body_len = usize::try_from(message.bodyLength()).map_err(|_| truncated())?;
        let body_start = header + len;
        let body = bytes
            .get(body_start..body_start.checked_add(body_len).ok_or_else(truncated)?)
            .ok_or_else(truncated)?;
        messages.push((metadata, body));
        bytes = &bytes[body_start + body_len..];
    }
    Ok(messages)
}

fn decode_file(path: &Path, buffer: &Buffer) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let trailer = buffer.len() - 10;
    let footer_len = read_footer_length(buffer[trailer..].try_into().expect("10 bytes"))
        .map_err(|e| bad_file(path, e.to_string()))?;
    let footer_start = trailer
        .checked_sub(footer_len)
        .filter(|&s| s >= 8)
        .ok_or_else(|| {
            bad_file(
                path,
                format!(
                    "footer of {footer_len} bytes does not fit in a file of {} bytes",
                    buffer.len()
                ),
            )
        })?;
    let footer = root_as_footer(&buffer[footer_start..trailer])
        .map_err(|e| bad_file(path, format!("corrupt footer: {e}")))?;
    let ipc_schema = footer
        .schema()
        .ok_or_else(|| bad_file(path, "the footer has no schema"))?;
    let schema = Arc::new(
        arrow_ipc::convert::try_fb_to_schema(ipc_schema)
            .map_err(|e| bad_file(path, e.to_string()))?,
    );
    let mut decoder = FileDecoder::new(schema.clone(), footer.version());
    let block_data = |block: &arrow_ipc::Block| -> Result<Buffer> {
        let offset = usize::try_from(block.offset()).ok();
        let len = usize::try_from(block.metaDataLength())
            .ok()
            .zip(usize::try_from(block.bodyLength()).ok())
            .and_then(|(m, b)| m.checked_add(b));
        match (offset, len) {
            (Some(o), Some(l)) if o.checked_add(l).is_some_and(|end| end <= footer_start) => {
                Ok(buffer.slice_with_length(o, l))
            }
            _ => Err(bad_file(
                path,
                format!(
                    "a block at offset {} of {} + {} bytes points outside the file ({} bytes)",
                    block.offset(),
                    block.metaDataLength(),
                    block.bodyLength(),
                    buffer.len()
                ),
            )),
        }
    };
    let check = |block: &arrow_ipc::Block, data: &Buffer| -> Result<()> {
        let meta_len = (block.metaDataLength() as usize).min(data.len());
        let (meta, body) = data.split_at(meta_len);
        // The metadata block is [continuation][length][flatbuffer], padded.
        let fb = match meta {
            [0xff, 0xff, 0xff, 0xff, _, _, _, _, rest @ ..] => rest,
            [_, _, _, _, rest @ ..] => rest,
            _ => return Err(bad_file(path, "truncated message metadata")),
        };
        check_declared_sizes(path, fb, body)
    };
    for block in footer.dictionaries().iter().flatten() {
        let data = block_data(block)?;
        check(block, &data)?;
        decoder
            .read_dictionary(block, &data)
            .map_err(|e| bad_file(path, e.to_string()))?;
    }
    let mut batches = Vec::new();
    for block in footer.recordBatches().iter().flatten() {
        let data = block_data(block)?;
        check(block, &data)?;
        if let Some(batch) = decoder
            .read_record_batch(block, &data)
            .map_err(|e| bad_file(path, e.to_string()))?
        {
            batches.push(batch);
        }
    }
    Ok((schema, batches))
}

fn decode_stream(path: &Path, mut buffer: Buffer) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    for (metadata, body) in stream_messages(path, &buffer)? {
        check_declared_sizes(path, metadata, body)?;
    }
    let mut decoder = StreamDecoder::new();
    let mut batches = Vec::new();
    while !buffer.is_empty() {
        if let Some(batch) = decoder
            .decode(&mut buffer)
            .map_err(|e| bad_file(path, e.to_string()))?
        {
            batches.push(batch);
        }
    }
    decoder
        .finish()
        .map_err(|e| bad_file(path, format!("truncated Arrow IPC stream: {e}")))?;
    let schema = decoder
        .schema()
        .ok_or_else(|| bad_file(path, "not an Arrow IPC file or stream (no schema message)"))?;
    Ok((schema, batches))
}

/// The tensor a column of a record batch holds.
pub(crate) fn column_tensor(field: &Field, array: &dyn Array) -> Result<ArrowTensor> {
    let tensor = ArrowTensor::from_arrow(field, array.to_data())?;
    if field.metadata().get(FORM_KEY).map(String::as_str) == Some("element") {
        tensor.into_element()
    } else {
        Ok(tensor)
    }
}

/// The tensor of column `index` across `batches`: a view when there is one batch, a
/// concatenation (a copy) when there are several.
pub fn column_across(
    schema: &Schema,
    batches: &[RecordBatch],
    index: usize,
) -> Result<ArrowTensor> {
    let field = schema.field(index);
    match batches {
        [one] => column_tensor(field, one.column(index).as_ref()),
        [] => column_tensor(
            field,
            arrow_array::new_empty_array(field.data_type()).as_ref(),
        ),
        _ => {
            let parts: Vec<&dyn Array> = batches.iter().map(|b| b.column(index).as_ref()).collect();
            let joined = arrow_select::concat::concat(&parts)?;
            column_tensor(field, joined.as_ref())
        }
    }
}

/// Every column of `batches` as a named tensor (see [`column_across`]).
pub fn tensors_of(schema: &Schema, batches: &[RecordBatch]) -> Result<Vec<(String, ArrowTensor)>> {
    (0..schema.fields().len())
        .map(|i| column_across(schema, batches, i).map(|t| (schema.field(i).name().clone(), t)))
        .collect()
}

impl IpcData {
    /// The schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// File or stream.
    pub fn format(&self) -> IpcFormat {
        self.format
    }

    /// The record batches.
    pub fn batches(&self) -> &[RecordBatch] {
        &self.batches
    }

    /// The address range of the memory mapping, when the data was mapped.
    pub fn mapping(&self) -> Option<(usize, usize)> {
        self.mapping
    }

    fn context(&self, e: Error) -> Error {
        match e {
            Error::InvalidData { what, message } => {
                bad_file(&self.path, format!("{what}: {message}"))
            }
            Error::Nulls { what, count } => Error::Nulls {
                what: format!("{}: {what}", self.path.display()),
                count,
            },
            Error::UnsupportedType { what, kind, name } => Error::UnsupportedType {
                what: format!("{}: {what}", self.path.display()),
                kind,
                name,
            },
            other => other,
        }
    }

    /// The tensors of batch `index`, by column: views, never copies.
    pub fn batch_tensors(&self, index: usize) -> Result<Vec<(String, ArrowTensor)>> {
        let batch = &self.batches[index];
        self.schema
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(field, column)| {
                column_tensor(field, column.as_ref())
                    .map(|t| (field.name().clone(), t))
                    .map_err(|e| self.context(e))
            })
            .collect()
    }

    /// The tensor of column `name` across all batches: a view when the data has one batch,
    /// a concatenation (a copy) when it has several.
    pub fn tensor(&self, name: &str) -> Result<ArrowTensor> {
        let (index, _) = self.schema.column_with_name(name).ok_or_else(|| {
            bad_file(
                &self.path,
                format!(
                    "no column {name:?}; the columns are {:?}",
                    self.schema
                        .fields()
                        .iter()
                        .map(|f| f.name())
                        .collect::<Vec<_>>()
                ),
            )
        })?;
        column_across(&self.schema, &self.batches, index).map_err(|e| self.context(e))
    }

    /// Every column's tensor, in schema order (see [`tensor`](Self::tensor)).
    pub fn tensors(&self) -> Result<Vec<(String, ArrowTensor)>> {
        self.schema
            .fields()
            .iter()
            .map(|f| self.tensor(f.name()).map(|t| (f.name().clone(), t)))
            .collect()
    }

    /// Column names and their tensors' descriptions, without touching the data.
    pub fn describe(&self) -> HashMap<String, String> {
        self.schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().to_string()))
            .collect()
    }
}
