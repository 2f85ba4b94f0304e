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
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch, RecordBatchOptions};
use arrow_buffer::Buffer;
use arrow_ipc::reader::read_footer_length;
use arrow_ipc::writer::{FileWriter, IpcWriteOptions, StreamWriter};
use arrow_ipc::{root_as_footer, CompressionType, MetadataVersion};
use arrow_schema::{Field, Schema, SchemaRef};

use crate::error::{Error, Result};
use crate::ragged::{is_ragged_field, RaggedTensor};
use crate::tensor::{ArrowTensor, Form};

/// Field metadata key that marks a column holding one whole array in its single row.
pub const FORM_KEY: &str = "arrowbridge.form";
/// Field metadata key holding the shape (a JSON list) of a column sent flat (see
/// [`wire_batches`]).
pub const SHAPE_KEY: &str = "arrowbridge.shape";
/// Every buffer arrowbridge writes starts at a multiple of this many bytes.
pub const ALIGNMENT: usize = 64;
const MAGIC: &[u8; 6] = b"ARROW1";

/// File (random access, with a footer) or stream (sequential messages).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IpcFormat {
    /// The IPC file format: random access through a footer (`.arrow`).
    #[default]
    File,
    /// The IPC streaming format: messages in sequence (`.arrows`).
    Stream,
}

/// Buffer compression of the IPC format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// LZ4 frames.
    Lz4,
    /// Zstandard.
    Zstd,
}

/// How to write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// File (the default) or stream.
    pub format: IpcFormat,
    /// Compress every buffer, or none (the default: uncompressed buffers are read as views).
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

/// A column of a table: a tensor, or ragged data (`arrow.variable_shape_tensor`), one part
/// per record batch when read (each part a view of its batch).
#[derive(Clone, Debug)]
pub enum Column {
    /// A tensor (see [`record_batch`] for how it becomes rows).
    Tensor(ArrowTensor),
    /// Ragged data: one row per tensor.
    Ragged(Vec<RaggedTensor>),
}

/// One record batch holding `columns`, some of them ragged: every column must have the same
/// number of rows (a ragged column one per tensor, a tensor the length of its axis 0). Without
/// a ragged column this is [`record_batch`].
pub fn record_batch_of(columns: &[(&str, &Column)]) -> Result<RecordBatch> {
    if columns.iter().all(|(_, c)| matches!(c, Column::Tensor(_))) {
        let tensors: Vec<(&str, &ArrowTensor)> = columns
            .iter()
            .map(|(name, c)| match c {
                Column::Tensor(t) => (*name, t),
                Column::Ragged(_) => unreachable!("checked above"),
            })
            .collect();
        return record_batch(&tensors);
    }
    let mut fields = Vec::with_capacity(columns.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    let mut rows: Option<(&str, usize)> = None;
    for (name, column) in columns {
        let (field, array, n) = match column {
            Column::Tensor(t) if t.form() == Form::Rows && !t.shape().is_empty() => {
                (t.field(name), t.array(), t.shape()[0])
            }
            Column::Tensor(t) => {
                return Err(Error::shape(
                    format!("column {name:?}"),
                    format!(
                        "an array of shape {:?} cannot share a table with ragged columns (it has no rows)",
                        t.shape()
                    ),
                ))
            }
            Column::Ragged(parts) => {
                let joined = RaggedTensor::concat(parts)?;
                (joined.field(name), joined.array(), joined.len())
            }
        };
        match rows {
            Some((first, r)) if r != n => {
                return Err(Error::shape(
                    format!("column {name:?}"),
                    format!(
                        "{n} rows, column {first:?} has {r}: a table with ragged columns needs one row count (a ragged column has one row per array)"
                    ),
                ))
            }
            None => rows = Some((name, n)),
            _ => {}
        }
        fields.push(field);
        arrays.push(array);
    }
    let schema = Arc::new(Schema::new(fields));
    let options = RecordBatchOptions::new().with_row_count(rows.map(|(_, n)| n));
    Ok(RecordBatch::try_new_with_options(schema, arrays, &options)?)
}

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

/// The file a write to `path` replaces: `path` itself, or, when `path` is a symbolic link,
/// the file the chain of links ends at (which need not exist yet), so that the link stays a
/// link, as editors and atomic-write libraries do it.
fn write_target(path: &Path) -> Result<PathBuf> {
    let mut target = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&target) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = std::fs::read_link(&target).map_err(io_error(path))?;
                target = match target.parent() {
                    Some(parent) if link.is_relative() => parent.join(link),
                    _ => link,
                };
            }
            _ => return Ok(target),
        }
    }
    Err(bad_file(path, "too many levels of symbolic links"))
}

/// A temporary name beside `name` that stays within the 255-byte limit of file names
/// whatever the length of `name`.
fn temp_name(name: &str) -> String {
    let mut stem = &name[..name.len().min(100)];
    while !name.is_char_boundary(stem.len()) {
        stem = &stem[..stem.len() - 1];
    }
    format!(
        ".{stem}.tmp-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates the temporary file that will replace `existing` (if any), with its permission bits
/// (and, where the process may, its owner) before any data goes in.
fn create_temp(temp: &Path, existing: Option<&std::fs::Metadata>, path: &Path) -> Result<File> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temp)
        .map_err(io_error(path))?;
    #[cfg(unix)]
    if let Some(meta) = existing {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // Set explicitly: the umask applied at creation may have removed bits the file had.
        file.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io_error(path))?;
        // Only a privileged process may give a file away; others keep the new file theirs.
        let _ = std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()));
    }
    #[cfg(not(unix))]
    let _ = existing;
    Ok(file)
}

/// Files at least this large are closed on another thread once replaced (see [`close_later`]).
const CLOSE_LATER_BYTES: u64 = 1 << 20;

/// The file a write is about to replace, held open across the rename when it is large.
fn open_replaced(target: &Path, existing: Option<&std::fs::Metadata>) -> Option<File> {
    let meta = existing?;
    (cfg!(unix) && meta.is_file() && meta.len() >= CLOSE_LATER_BYTES)
        .then(|| File::open(target).ok())
        .flatten()
}

/// Closes a replaced file on a thread of its own. Its last close releases its pages, which
/// on tmpfs (its memory) takes about a tenth of the time writing it did: the writer need not
/// wait for that, as it need not wait for memory a program frees. At most two replaced
/// files are in flight: when the thread is still busy with one and another waits, the file
/// is closed here (a writer faster than the closing thread is held back, not its memory).
fn close_later(file: File) {
    use std::sync::mpsc::{sync_channel, SyncSender};
    use std::sync::{Mutex, OnceLock};
    static CLOSER: OnceLock<Option<Mutex<SyncSender<File>>>> = OnceLock::new();
    let closer = CLOSER.get_or_init(|| {
        let (send, receive) = sync_channel::<File>(1);
        std::thread::Builder::new()
            .name("arrowbridge-close".into())
            .spawn(move || receive.into_iter().for_each(drop))
            .ok()
            .map(|_| Mutex::new(send))
    });
    let Some(closer) = closer else { return };
    let send = closer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // A full queue or a gone thread hands the file back, and it closes here.
    let _ = send.try_send(file);
}

/// Writes `path` atomically: the data goes to a temporary file in the same directory, is
/// flushed to disk, and is renamed into place, so a crash leaves the previous file intact.
///
/// The new file keeps the permission bits (and, for a privileged process, the owner) of the
/// file it replaces. When `path` is a symbolic link, the file it points to is replaced and
/// the link stays.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    let target = write_target(path)?;
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .ok_or_else(|| bad_file(path, "not a file name"))?
        .to_string_lossy()
        .into_owned();
    let existing = std::fs::metadata(&target).ok();
    if existing.as_ref().is_some_and(std::fs::Metadata::is_dir) {
        return Err(bad_file(path, "is a directory"));
    }
    let temp = dir.join(temp_name(&name));
    // Errors name `path`, the file the caller asked for; the temporary file is ours.
    let result = (|| {
        let file = create_temp(&temp, existing.as_ref(), path)?;
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
        let replaced = open_replaced(&target, existing.as_ref());
        std::fs::rename(&temp, &target).map_err(io_error(path))?;
        if let Some(replaced) = replaced {
            close_later(replaced);
        }
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

/// Holds a file mapping alive while Arrow buffers point into it.
struct Mapping(#[allow(dead_code)] memmap2::Mmap);

/// Where one IPC message lies in the data: its flatbuffer and its body.
#[derive(Clone, Debug)]
struct MessageLocation {
    metadata: Range<usize>,
    body: Range<usize>,
}

/// An Arrow IPC file or stream, opened for reading.
///
/// Opening reads the schema, the dictionaries and the headers of the record batches, and
/// checks every message ([`check_message`]); a record batch is decoded only when it is read,
/// so [`describe`](Self::describe) reads no data and reading batch by batch holds one batch
/// at a time. Uncompressed buffers are views of the data (a memory mapping, or one read);
/// compressed ones are decompressed when their batch is read.
#[derive(Clone, Debug)]
pub struct IpcData {
    path: PathBuf,
    data: Buffer,
    /// The file's schema, which every message is decoded against.
    full_schema: SchemaRef,
    /// The columns read: all, or those asked for (`projection`, indices into `full_schema`).
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    dictionaries: HashMap<i64, ArrayRef>,
    batches: Vec<MessageLocation>,
    rows: Vec<usize>,
    compressed: bool,
    mapping: Option<(usize, usize)>,
    format: IpcFormat,
}

/// Reads an Arrow IPC file or stream (the format is recognised by its magic bytes).
///
/// With `mmap`, the file is memory-mapped and every uncompressed, aligned buffer is a view
/// into the mapping, which lives as long as any view; without, the file is read into one
/// 64-byte aligned allocation first. Compressed buffers are decompressed (a copy).
pub fn read_ipc(path: &Path, mmap: bool) -> Result<IpcData> {
    read_ipc_columns(path, mmap, None)
}

/// [`read_ipc`] of the columns named in `columns` only (all when `None`), in that order. The
/// other columns are never decoded, so they may be of types arrowbridge does not carry.
pub fn read_ipc_columns(path: &Path, mmap: bool, columns: Option<&[String]>) -> Result<IpcData> {
    let file = File::open(path).map_err(io_error(path))?;
    let metadata = file.metadata().map_err(io_error(path))?;
    if metadata.is_dir() {
        return Err(bad_file(path, "is a directory, not an Arrow IPC file"));
    }
    let len = metadata.len() as usize;
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
        let mut bytes = vec_for_read(len);
        read_parallel(&file, &mut bytes).map_err(io_error(path))?;
        (Buffer::from_vec(bytes), None)
    };
    decode_columns(path, buffer, mapping, columns)
}

/// Asks for transparent huge pages under the 2 MiB-aligned part of a large buffer about to
/// be filled, as NumPy does for its own large arrays (where the kernel offers them only on
/// request): reading into 4 KiB pages costs a TLB miss every 4 KiB, and made a 16 MiB
/// `read_ipc(mmap=False)` slower than `np.load`. The allocator reuses the memory of freed
/// buffers, so the advice usually finds pages that are huge already.
pub(crate) fn advise_huge_pages<T>(memory: &mut [T]) {
    const HUGE: usize = 2 << 20;
    let (start, len) = (memory.as_mut_ptr() as usize, std::mem::size_of_val(memory));
    if len < 2 * HUGE || !cfg!(target_os = "linux") {
        return;
    }
    let first = start.next_multiple_of(HUGE);
    let end = (start + len) / HUGE * HUGE;
    if end > first {
        // SAFETY: advice about whole pages inside memory the caller owns; it changes no
        // contents, and a kernel without huge pages ignores it.
        #[cfg(target_os = "linux")]
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
        }
    }
}

/// A buffer of `len` bytes to read into: allocated, not zeroed (every byte is read into
/// before it is used).
fn vec_for_read(len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len);
    advise_huge_pages(bytes.spare_capacity_mut());
    // SAFETY: u8 has no invalid bit patterns; `read_parallel` fills every byte or fails,
    // and on failure the buffer is dropped unread.
    unsafe { bytes.set_len(len) };
    bytes
}

/// Reads `file` from its start into all of `out`. Reads of 8 MiB or more are split over up to
/// four threads, each copying its own range: copying out of the page cache is the whole cost
/// of a read, and one core copies at a fraction of what the memory can take.
fn read_parallel(file: &File, out: &mut [u8]) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        const MIN_PART: usize = 4 << 20;
        // available_parallelism reads the cgroup's CPU quota from files: ask once.
        static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let parts = match out.len() / MIN_PART {
            0 | 1 => 1,
            n => n.min(*THREADS.get_or_init(|| {
                std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
            })),
        };
        if parts > 1 {
            let part = out.len().div_ceil(parts).next_multiple_of(4096);
            return std::thread::scope(|scope| {
                let mut chunks = out.chunks_mut(part).enumerate();
                let (_, first) = chunks.next().expect("at least one part");
                let others: Vec<_> = chunks
                    .map(|(i, chunk)| {
                        scope.spawn(move || file.read_exact_at(chunk, (i * part) as u64))
                    })
                    .collect();
                let mut result = file.read_exact_at(first, 0);
                for other in others {
                    let done = other.join().unwrap_or_else(|_| {
                        Err(std::io::Error::other("a reading thread panicked"))
                    });
                    result = result.and(done);
                }
                result
            });
        }
        file.read_exact_at(out, 0)
    }
    #[cfg(not(unix))]
    {
        let mut file = file;
        file.read_exact(out)
    }
}

/// Opens IPC bytes already in memory (`path` only names them in errors).
pub fn decode(path: &Path, buffer: Buffer, mapping: Option<(usize, usize)>) -> Result<IpcData> {
    decode_columns(path, buffer, mapping, None)
}

/// [`decode`] of the columns named in `columns` only (see [`read_ipc_columns`]).
pub fn decode_columns(
    path: &Path,
    buffer: Buffer,
    mapping: Option<(usize, usize)>,
    columns: Option<&[String]>,
) -> Result<IpcData> {
    // Every message is checked before arrow-ipc reads it; a panic that gets through anyway
    // becomes an error naming the file, never a crash.
    catch_unwind(AssertUnwindSafe(|| {
        open_data(path, buffer, mapping, columns)
    }))
    .unwrap_or_else(|panic| Err(corrupt(path, panic.as_ref())))
}

fn corrupt(path: &Path, panic: &(dyn std::any::Any + Send)) -> Error {
    let message = crate::error::panic_message(panic);
    bad_file(path, format!("corrupt Arrow IPC data ({message})"))
}

fn open_data(
    path: &Path,
    data: Buffer,
    mapping: Option<(usize, usize)>,
    columns: Option<&[String]>,
) -> Result<IpcData> {
    let what = path.display().to_string();
    let (format, schema, dictionaries, batches) =
        if data.len() >= 12 && data[..6] == MAGIC[..] && data[data.len() - 6..] == MAGIC[..] {
            let (schema, dictionaries, batches) = index_file(path, &data)?;
            (IpcFormat::File, schema, dictionaries, batches)
        } else if data.len() >= 6 && data[..6] == MAGIC[..] {
            return Err(bad_file(
                path,
                "truncated Arrow IPC file (the footer and trailing magic are missing)",
            ));
        } else {
            let (schema, dictionaries, batches) = index_stream(path, &data)?;
            (IpcFormat::Stream, schema, dictionaries, batches)
        };
    for at in dictionaries.iter().chain(&batches) {
        let (metadata, body) = (&data[at.metadata.clone()], &data[at.body.clone()]);
        check_message(&what, metadata, body, Some(&schema))?;
    }
    let full_schema = Arc::new(schema);
    let projection = columns
        .map(|names| {
            names
                .iter()
                .map(|n| column_index(&full_schema, n, path))
                .collect::<Result<Vec<usize>>>()
        })
        .transpose()?;
    let schema = match &projection {
        Some(indices) => Arc::new(full_schema.project(indices)?),
        None => full_schema.clone(),
    };
    check_schema(&what, &schema)?;
    let mut dictionaries_by_id = HashMap::new();
    for at in &dictionaries {
        let message = message_at(path, &data, at)?;
        let dictionary = message
            .header_as_dictionary_batch()
            .ok_or_else(|| bad_file(path, "a dictionary block holds no dictionary batch"))?;
        let body = data.slice_with_length(at.body.start, at.body.len());
        arrow_ipc::reader::read_dictionary(
            &body,
            dictionary,
            &full_schema,
            &mut dictionaries_by_id,
            &message.version(),
        )
        .map_err(|e| bad_file(path, e.to_string()))?;
    }
    let mut rows = Vec::with_capacity(batches.len());
    let mut compressed = false;
    for at in &batches {
        let batch = message_at(path, &data, at)?
            .header_as_record_batch()
            .ok_or_else(|| bad_file(path, "a record batch block holds no record batch"))?;
        compressed |= batch.compression().is_some();
        rows.push(
            usize::try_from(batch.length())
                .map_err(|_| bad_file(path, format!("negative row count {}", batch.length())))?,
        );
    }
    Ok(IpcData {
        path: path.to_path_buf(),
        data,
        full_schema,
        schema,
        projection,
        dictionaries: dictionaries_by_id,
        batches,
        rows,
        compressed,
        mapping,
        format,
    })
}

/// The index of the column called `name`, which must be the only one of its name.
fn column_index(schema: &Schema, name: &str, path: &Path) -> Result<usize> {
    let matches: Vec<usize> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| f.name() == name)
        .map(|(i, _)| i)
        .collect();
    match matches[..] {
        [index] => Ok(index),
        [] => Err(bad_file(
            path,
            format!(
                "no column {name:?}; the columns are {:?}",
                schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
            ),
        )),
        _ => Err(bad_file(
            path,
            format!("{} columns are named {name:?}", matches.len()),
        )),
    }
}

/// The message at `at`, whose flatbuffer was checked when the data was opened.
fn message_at<'a>(
    path: &Path,
    data: &'a Buffer,
    at: &MessageLocation,
) -> Result<arrow_ipc::Message<'a>> {
    arrow_ipc::root_as_message(&data[at.metadata.clone()])
        .map_err(|e| bad_file(path, format!("corrupt message: {e}")))
}

/// The (metadata, body) of each message of an IPC stream, with their bounds checked, as
/// ranges of `bytes`.
fn stream_messages(path: &Path, bytes: &[u8]) -> Result<Vec<MessageLocation>> {
    let mut messages = Vec::new();
    let truncated = || bad_file(path, "truncated Arrow IPC message");
    let mut at = 0usize;
    while bytes.len() - at >= 4 {
        let word = |i: usize| -> Result<i32> {
            let four = bytes.get(i..i + 4).ok_or_else(truncated)?;
            Ok(i32::from_le_bytes(four.try_into().expect("4 bytes")))
        };
        let (mut len, mut header) = (word(at)?, 4);
        if len == -1 {
            len = word(at + 4)?;
            header = 8;
        }
        if len == 0 {
            break; // end of stream
        }
        let len = usize::try_from(len)
            .map_err(|_| bad_file(path, format!("negative message length {len}")))?;
        let metadata = at + header..(at + header).checked_add(len).ok_or_else(truncated)?;
        let flatbuffer = bytes.get(metadata.clone()).ok_or_else(truncated)?;
        let message = arrow_ipc::root_as_message(flatbuffer)
            .map_err(|e| bad_file(path, format!("corrupt message: {e}")))?;
        let body_len = usize::try_from(message.bodyLength()).map_err(|_| truncated())?;
        let body = metadata.end..metadata.end.checked_add(body_len).ok_or_else(truncated)?;
        if body.end > bytes.len() {
            return Err(truncated());
        }
        at = body.end;
        messages.push(MessageLocation { metadata, body });
    }
    Ok(messages)
}

/// The schema, dictionary messages and record batch messages of an IPC stream.
type Index = (Schema, Vec<MessageLocation>, Vec<MessageLocation>);

fn index_stream(path: &Path, data: &Buffer) -> Result<Index> {
    let what = path.display().to_string();
    let messages = stream_messages(path, data)?;
    let no_schema = || bad_file(path, "not an Arrow IPC file or stream (no schema message)");
    let (first, rest) = messages.split_first().ok_or_else(no_schema)?;
    let schema = message_at(path, data, first)?
        .header_as_schema()
        .ok_or_else(no_schema)
        .and_then(|fb| schema_of(&what, fb))?;
    let (mut dictionaries, mut batches) = (Vec::new(), Vec::new());
    for at in rest {
        match message_at(path, data, at)?.header_type() {
            arrow_ipc::MessageHeader::RecordBatch => batches.push(at.clone()),
            arrow_ipc::MessageHeader::DictionaryBatch => dictionaries.push(at.clone()),
            arrow_ipc::MessageHeader::Schema => {
                return Err(bad_file(path, "a second schema message in the stream"))
            }
            _ => {}
        }
    }
    Ok((schema, dictionaries, batches))
}

fn index_file(path: &Path, data: &Buffer) -> Result<Index> {
    let what = path.display().to_string();
    let trailer = data.len() - 10;
    let footer_len = read_footer_length(data[trailer..].try_into().expect("10 bytes"))
        .map_err(|e| bad_file(path, e.to_string()))?;
    let footer_start = trailer
        .checked_sub(footer_len)
        .filter(|&s| s >= 8)
        .ok_or_else(|| {
            bad_file(
                path,
                format!(
                    "footer of {footer_len} bytes does not fit in a file of {} bytes",
                    data.len()
                ),
            )
        })?;
    let footer = root_as_footer(&data[footer_start..trailer])
        .map_err(|e| bad_file(path, format!("corrupt footer: {e}")))?;
    let schema = footer
        .schema()
        .ok_or_else(|| bad_file(path, "the footer has no schema"))
        .and_then(|fb| schema_of(&what, fb))?;
    let locate = |block: &arrow_ipc::Block| -> Result<MessageLocation> {
        let outside = || {
            bad_file(
                path,
                format!(
                    "a block at offset {} of {} + {} bytes points outside the file ({} bytes)",
                    block.offset(),
                    block.metaDataLength(),
                    block.bodyLength(),
                    data.len()
                ),
            )
        };
        let start = usize::try_from(block.offset()).map_err(|_| outside())?;
        let meta_len = usize::try_from(block.metaDataLength()).map_err(|_| outside())?;
        let body_len = usize::try_from(block.bodyLength()).map_err(|_| outside())?;
        let meta_end = start.checked_add(meta_len).ok_or_else(outside)?;
        let body_end = meta_end.checked_add(body_len).ok_or_else(outside)?;
        if body_end > footer_start {
            return Err(outside());
        }
        // The metadata block is [continuation][length][flatbuffer], padded.
        let prefix = match &data[start..meta_end] {
            [0xff, 0xff, 0xff, 0xff, _, _, _, _, ..] => 8,
            [_, _, _, _, ..] => 4,
            _ => return Err(bad_file(path, "truncated message metadata")),
        };
        Ok(MessageLocation {
            metadata: start + prefix..meta_end,
            body: meta_end..body_end,
        })
    };
    let [dictionaries, batches] = [footer.dictionaries(), footer.recordBatches()].map(|blocks| {
        blocks
            .iter()
            .flatten()
            .map(locate)
            .collect::<Result<Vec<_>>>()
    });
    Ok((schema, dictionaries?, batches?))
}

/// Checks one IPC message before arrow-ipc decodes it, so that no input, however hostile,
/// reaches a panic or an aborting allocation inside the decoder. `what` names the input in
/// errors (a path, or the Flight call), `metadata` is the message flatbuffer, `body` its
/// body.
///
/// * every buffer of a record or dictionary batch lies inside `body` (arrow-ipc slices the
///   body at the offsets a message declares, and panics past its end);
/// * the uncompressed sizes that compressed buffers declare add up to memory this process
///   may allocate ([`crate::memory::allocation_limit`]; arrow-ipc allocates them up front);
/// * a schema is little-endian (arrow-ipc would hand out byte-swapped values) and has no
///   union columns (whose buffers arrow-ipc slices without checking their lengths);
/// * with the stream's `schema` known (a file's, or the one its schema message brought), a
///   record batch's field nodes and typed buffers fit it: no fixed-size list overflows,
///   every typed buffer holds whole values (arrow-data panics on both).
///
/// Files, streams and the Flight server all decode through this check.
pub fn check_message(
    what: &str,
    metadata: &[u8],
    body: &[u8],
    schema: Option<&Schema>,
) -> Result<()> {
    check(what, metadata, body.len(), Some(body), schema)
}

/// [`check_message`] for a message whose body of `body_len` bytes has not arrived yet (it is
/// to land in place as it does): everything is checked but what needs the body's bytes, so
/// a record batch with compressed buffers is refused.
pub fn check_message_header(
    what: &str,
    metadata: &[u8],
    body_len: usize,
    schema: Option<&Schema>,
) -> Result<()> {
    check(what, metadata, body_len, None, schema)
}

fn check(
    what: &str,
    metadata: &[u8],
    body_len: usize,
    body: Option<&[u8]>,
    schema: Option<&Schema>,
) -> Result<()> {
    let bad = |message: String| Error::BadFile {
        path: what.to_string(),
        message,
    };
    let message =
        arrow_ipc::root_as_message(metadata).map_err(|e| bad(format!("corrupt message: {e}")))?;
    if body.is_none() {
        let compressed = match message.header_type() {
            arrow_ipc::MessageHeader::RecordBatch => message
                .header_as_record_batch()
                .is_some_and(|b| b.compression().is_some()),
            arrow_ipc::MessageHeader::DictionaryBatch => message
                .header_as_dictionary_batch()
                .and_then(|d| d.data())
                .is_some_and(|b| b.compression().is_some()),
            _ => false,
        };
        if compressed {
            return Err(bad(
                "a record batch with compressed buffers where the values land in place".into(),
            ));
        }
    }
    let body = body.unwrap_or(&[]);
    let batch = match message.header_type() {
        arrow_ipc::MessageHeader::Schema => {
            return match message.header_as_schema() {
                Some(schema) => check_schema_message(what, schema),
                None => Err(bad("a schema message without a schema".into())),
            }
        }
        arrow_ipc::MessageHeader::RecordBatch => {
            let batch = message.header_as_record_batch();
            if let (Some(batch), Some(schema)) = (batch, schema) {
                check_nodes(what, schema, batch, body)?;
            }
            batch
        }
        arrow_ipc::MessageHeader::DictionaryBatch => {
            message.header_as_dictionary_batch().and_then(|d| d.data())
        }
        _ => None,
    };
    let Some(batch) = batch else { return Ok(()) };
    let compressed = batch.compression().is_some();
    let mut declared_total = 0u64;
    for (i, b) in batch.buffers().iter().flatten().enumerate() {
        let range = usize::try_from(b.offset())
            .ok()
            .zip(usize::try_from(b.length()).ok())
            .and_then(|(start, len)| Some(start..start.checked_add(len)?))
            .filter(|r| r.end <= body_len)
            .ok_or_else(|| {
                bad(format!(
                    "buffer {i} at body offset {} of {} bytes lies outside the message body of {body_len} bytes",
                    b.offset(),
                    b.length(),
                ))
            })?;
        if !compressed || range.is_empty() {
            continue;
        }
        let prefix = body
            .get(range.start..range.start + 8)
            .filter(|_| range.len() >= 8)
            .ok_or_else(|| {
                bad(format!(
                    "compressed buffer {i} at body offset {} has {} bytes, fewer than its 8-byte length prefix",
                    range.start,
                    range.len()
                ))
            })?;
        let declared = i64::from_le_bytes(prefix.try_into().expect("8 bytes"));
        if declared == -1 {
            continue; // stored uncompressed
        }
        let declared = u64::try_from(declared).map_err(|_| {
            bad(format!(
                "compressed buffer {i} declares a negative uncompressed length {declared}"
            ))
        })?;
        declared_total = declared_total.saturating_add(declared);
    }
    if declared_total == 0 {
        return Ok(());
    }
    let physical = crate::memory::physical_memory().unwrap_or(u64::MAX);
    if declared_total > physical {
        return Err(bad(format!(
            "its compressed buffers declare {declared_total} bytes uncompressed, more than this machine's {physical} bytes of memory"
        )));
    }
    crate::memory::check_allocation(
        &format!("{what}: decompressing a record batch"),
        declared_total,
    )
}

/// The schema a schema message carries (`None` for other messages and unreadable ones).
pub fn schema_of_message(metadata: &[u8]) -> Option<Schema> {
    let message = arrow_ipc::root_as_message(metadata).ok()?;
    arrow_ipc::convert::try_fb_to_schema(message.header_as_schema()?).ok()
}

/// Checks the field nodes and buffers of `batch` against `schema`, walking them in the
/// depth-first order the IPC format lays them out (the order arrow-ipc reads them):
///
/// * a node's length is not negative, and a fixed-size list's length times its size fits in
///   an `i64` (arrow-data computes it with `expect`);
/// * a fixed-width buffer holds whole values: its byte length (once decompressed, as the
///   8-byte prefix of a compressed buffer declares it) is a multiple of the value's width
///   (arrow-data's validation asserts it when it views offsets as `i32`).
///
/// Types whose buffer count the schema does not fix (views with variadic buffers, unions)
/// end the walk: what follows them is left to arrow-ipc's own checks.
fn check_nodes(
    what: &str,
    schema: &Schema,
    batch: arrow_ipc::RecordBatch<'_>,
    body: &[u8],
) -> Result<()> {
    use arrow_data::BufferSpec;
    use arrow_schema::DataType as D;

    struct Walk<'a, N, B> {
        what: &'a str,
        nodes: N,
        buffers: B,
        body: &'a [u8],
        compressed: bool,
    }

    impl<'a, 'b, N, B> Walk<'a, N, B>
    where
        N: Iterator<Item = &'b arrow_ipc::FieldNode>,
        B: Iterator<Item = &'b arrow_ipc::Buffer>,
    {
        fn bad(&self, message: String) -> Error {
            Error::BadFile {
                path: self.what.to_string(),
                message,
            }
        }

        /// The byte length buffer `b` has once decoded (checked to lie in the body before).
        fn decoded_len(&self, b: &arrow_ipc::Buffer) -> Option<u64> {
            let len = u64::try_from(b.length()).ok()?;
            if !self.compressed || len == 0 {
                return Some(len);
            }
            let start = usize::try_from(b.offset()).ok()?;
            let prefix = self.body.get(start..start.checked_add(8)?)?;
            match i64::from_le_bytes(prefix.try_into().ok()?) {
                -1 => Some(len - 8),
                declared => u64::try_from(declared).ok(),
            }
        }

        /// Walks one field; `false` when the walk cannot go on past it.
        fn field(&mut self, data_type: &D) -> Result<bool> {
            // Fewer nodes or buffers than fields is reported by arrow-ipc itself, as an error.
            let Some(node) = self.nodes.next() else {
                return Ok(false);
            };
            let len = u64::try_from(node.length()).map_err(|_| {
                self.bad(format!(
                    "a field node declares a negative length {}",
                    node.length()
                ))
            })?;
            if matches!(
                data_type,
                D::Union(..) | D::Utf8View | D::BinaryView | D::Null
            ) {
                return Ok(false);
            }
            let layout =
                crate::ffi::layout(data_type, self.what).map_err(|e| self.bad(e.to_string()))?;
            if layout.variadic {
                return Ok(false);
            }
            if layout.can_contain_null_mask && self.buffers.next().is_none() {
                return Ok(false);
            }
            for spec in &layout.buffers {
                let Some(buffer) = self.buffers.next() else {
                    return Ok(false);
                };
                // Widths that are not powers of two (fixed_size_binary) are not viewed as
                // typed values, and writers pad buffers to 8 bytes, so only typed widths count.
                if let BufferSpec::FixedWidth { byte_width, .. } = spec {
                    let width = *byte_width as u64;
                    if !width.is_power_of_two() {
                        continue;
                    }
                    match self.decoded_len(buffer) {
                        Some(n) if width > 0 && n % width != 0 => {
                            return Err(self.bad(format!(
                                "a buffer of {data_type} values has {n} bytes, not a whole number of {width}-byte values"
                            )))
                        }
                        _ => {}
                    }
                }
            }
            match data_type {
                D::FixedSizeList(child, size) => {
                    let size = u64::try_from(*size).unwrap_or(0);
                    len.checked_mul(size)
                        .filter(|&n| n <= i64::MAX as u64)
                        .ok_or_else(|| {
                            self.bad(format!(
                                "a fixed_size_list node of {len} rows of {size} values overflows"
                            ))
                        })?;
                    self.field(child.data_type())
                }
                D::List(child)
                | D::LargeList(child)
                | D::ListView(child)
                | D::LargeListView(child)
                | D::Map(child, _) => self.field(child.data_type()),
                D::Struct(fields) => {
                    for f in fields {
                        if !self.field(f.data_type())? {
                            return Ok(false);
                        }
                    }
                    Ok(true)
                }
                D::RunEndEncoded(ends, values) => {
                    Ok(self.field(ends.data_type())? && self.field(values.data_type())?)
                }
                _ => Ok(true),
            }
        }
    }

    let (Some(nodes), Some(buffers)) = (batch.nodes(), batch.buffers()) else {
        return Ok(());
    };
    let mut walk = Walk {
        what,
        nodes: nodes.iter(),
        buffers: buffers.iter(),
        body,
        compressed: batch.compression().is_some(),
    };
    for field in schema.fields() {
        if !walk.field(field.data_type())? {
            break;
        }
    }
    Ok(())
}

fn check_schema_message(what: &str, schema: arrow_ipc::Schema<'_>) -> Result<()> {
    let decoded = schema_of(what, schema)?;
    check_schema(what, &decoded)
}

/// The schema of a schema flatbuffer, refused when its data is not in this machine's byte
/// order (arrow-ipc would hand out byte-swapped values).
fn schema_of(what: &str, schema: arrow_ipc::Schema<'_>) -> Result<Schema> {
    let native = if cfg!(target_endian = "little") {
        arrow_ipc::Endianness::Little
    } else {
        arrow_ipc::Endianness::Big
    };
    if schema.endianness() != native {
        return Err(Error::ByteOrder {
            what: what.to_string(),
            dtype: format!(
                "data written {} (the schema's endianness)",
                if native == arrow_ipc::Endianness::Little {
                    "big-endian"
                } else {
                    "little-endian"
                }
            ),
        });
    }
    arrow_ipc::convert::try_fb_to_schema(schema).map_err(|e| Error::BadFile {
        path: what.to_string(),
        message: format!("corrupt schema: {e}"),
    })
}

/// Checks a decoded schema: names are unique (arrowbridge returns columns by name, so two
/// columns of one name would lose one of them) and no column is a union (see
/// [`check_message`]).
pub fn check_schema(what: &str, schema: &Schema) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for field in schema.fields() {
        if !seen.insert(field.name().as_str()) {
            let count = schema
                .fields()
                .iter()
                .filter(|f| f.name() == field.name())
                .count();
            return Err(Error::BadFile {
                path: what.to_string(),
                message: format!(
                    "{count} columns are named {:?}; arrowbridge reads columns by name, so names must be unique (rename them, e.g. with pyarrow's Table.rename_columns)",
                    field.name()
                ),
            });
        }
        if has_union(field.data_type()) {
            return Err(Error::UnsupportedType {
                what: format!("{what}: column {:?}", field.name()),
                kind: "Arrow type",
                name: field.data_type().to_string(),
            });
        }
    }
    Ok(())
}

fn has_union(data_type: &arrow_schema::DataType) -> bool {
    use arrow_schema::DataType as D;
    match data_type {
        D::Union(..) => true,
        D::List(f)
        | D::LargeList(f)
        | D::ListView(f)
        | D::LargeListView(f)
        | D::FixedSizeList(f, _)
        | D::Map(f, _) => has_union(f.data_type()),
        D::Struct(fields) => fields.iter().any(|f| has_union(f.data_type())),
        D::Dictionary(_, v) => has_union(v),
        D::RunEndEncoded(_, v) => has_union(v.data_type()),
        _ => false,
    }
}

/// The tensor a column of a record batch holds: a view of its buffers, except for a
/// bit-packed `boolean` column (pyarrow's bool), which is unpacked into bytes (a copy).
pub(crate) fn column_tensor(field: &Field, array: &dyn Array) -> Result<ArrowTensor> {
    let tensor = ArrowTensor::from_arrow_unpacking(field, array.to_data())?;
    match field.metadata().get(FORM_KEY).map(String::as_str) {
        Some("element") => tensor.into_element(),
        Some("flat") => tensor.reshaped(&flat_shape(field)?),
        _ => Ok(tensor),
    }
}

/// The shape a flat column restores (see [`wire_batches`]).
fn flat_shape(field: &Field) -> Result<Vec<usize>> {
    let what = format!("field {:?}", field.name());
    let json = field
        .metadata()
        .get(SHAPE_KEY)
        .ok_or_else(|| Error::invalid(&what, format!("a flat column without {SHAPE_KEY}")))?;
    serde_json::from_str(json)
        .map_err(|e| Error::invalid(&what, format!("{SHAPE_KEY} {json:?}: {e}")))
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
        [] => column_tensor(field, empty_column(field)?.as_ref()),
        _ => {
            let parts: Vec<&dyn Array> = batches.iter().map(|b| b.column(index).as_ref()).collect();
            let joined = arrow_select::concat::concat(&parts)?;
            column_tensor(field, joined.as_ref())
        }
    }
}

/// An empty array of `field`'s type, for the types a tensor can be read from (primitive
/// arrays and fixed-size lists of them); other types are refused here, because arrow-array
/// panics on some that a schema can declare (a map whose entries are not a struct).
fn empty_column(field: &Field) -> Result<ArrayRef> {
    use arrow_schema::DataType as D;
    let carried = match field.data_type() {
        D::FixedSizeList(child, _) => child.data_type().is_primitive(),
        other => other.is_primitive() || other == &D::Boolean,
    };
    if !carried {
        return Err(Error::UnsupportedType {
            what: format!("field {:?}", field.name()),
            kind: "Arrow type",
            name: field.data_type().to_string(),
        });
    }
    Ok(arrow_array::new_empty_array(field.data_type()))
}

/// Every column of `batches` as a named tensor (see [`column_across`]).
pub fn tensors_of(schema: &Schema, batches: &[RecordBatch]) -> Result<Vec<(String, ArrowTensor)>> {
    (0..schema.fields().len())
        .map(|i| column_across(schema, batches, i).map(|t| (schema.field(i).name().clone(), t)))
        .collect()
}

impl IpcData {
    /// The schema of the columns read.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// File or stream.
    pub fn format(&self) -> IpcFormat {
        self.format
    }

    /// The number of record batches.
    pub fn num_batches(&self) -> usize {
        self.batches.len()
    }

    /// The number of rows of batch `index`, from its header (nothing is decoded).
    pub fn batch_rows(&self, index: usize) -> Option<usize> {
        self.rows.get(index).copied()
    }

    /// The number of rows of all batches.
    pub fn num_rows(&self) -> usize {
        self.rows.iter().sum()
    }

    /// The address range of the memory mapping, when the data was mapped.
    pub fn mapping(&self) -> Option<(usize, usize)> {
        self.mapping
    }

    /// Record batch `index`, decoded now (its columns are views of the data unless they are
    /// compressed).
    pub fn batch(&self, index: usize) -> Result<RecordBatch> {
        let at = self.batches.get(index).ok_or_else(|| {
            Error::shape(
                "batch index",
                format!("{index} out of range for {} batches", self.batches.len()),
            )
        })?;
        let decode = || -> Result<RecordBatch> {
            let message = message_at(&self.path, &self.data, at)?;
            let batch = message.header_as_record_batch().ok_or_else(|| {
                bad_file(&self.path, "a record batch block holds no record batch")
            })?;
            let body = self.data.slice_with_length(at.body.start, at.body.len());
            arrow_ipc::reader::read_record_batch(
                &body,
                batch,
                self.full_schema.clone(),
                &self.dictionaries,
                self.projection.as_deref(),
                &message.version(),
            )
            .map_err(|e| bad_file(&self.path, e.to_string()))
        };
        // The message was checked at open; a panic that gets through anyway is an error.
        catch_unwind(AssertUnwindSafe(decode))
            .unwrap_or_else(|panic| Err(corrupt(&self.path, panic.as_ref())))
    }

    /// Every record batch, decoded now.
    pub fn batches(&self) -> Result<Vec<RecordBatch>> {
        (0..self.batches.len()).map(|i| self.batch(i)).collect()
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

    /// The tensors of batch `index`, by column: views, except for compressed buffers and
    /// bit-packed booleans.
    pub fn batch_tensors(&self, index: usize) -> Result<Vec<(String, ArrowTensor)>> {
        let batch = self.batch(index)?;
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
        let index = column_index(&self.schema, name, &self.path)?;
        column_across(&self.schema, &self.batches()?, index).map_err(|e| self.context(e))
    }

    /// Every column's tensor, in schema order (see [`tensor`](Self::tensor)); each batch is
    /// decoded once.
    pub fn tensors(&self) -> Result<Vec<(String, ArrowTensor)>> {
        let batches = self.batches()?;
        (0..self.schema.fields().len())
            .map(|i| {
                column_across(&self.schema, &batches, i)
                    .map(|t| (self.schema.field(i).name().clone(), t))
                    .map_err(|e| self.context(e))
            })
            .collect()
    }

    /// Every column in schema order, ragged ones included: a tensor as
    /// [`tensors`](Self::tensors) reads it, a ragged column as one part per batch, each a view
    /// of its batch (bit-packed `bool` values are unpacked, a copy).
    pub fn columns(&self) -> Result<Vec<(String, Column)>> {
        let batches = self.batches()?;
        self.columns_of(&batches)
    }

    /// The columns of batch `index` (see [`columns`](Self::columns)): always views.
    pub fn batch_columns(&self, index: usize) -> Result<Vec<(String, Column)>> {
        self.columns_of(&[self.batch(index)?])
    }

    fn columns_of(&self, batches: &[RecordBatch]) -> Result<Vec<(String, Column)>> {
        self.schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, field)| {
                let column = if is_ragged_field(field) {
                    Column::Ragged(
                        batches
                            .iter()
                            .map(|b| RaggedTensor::from_arrow(field, &b.column(i).to_data(), true))
                            .collect::<Result<_>>()
                            .map_err(|e| self.context(e))?,
                    )
                } else {
                    Column::Tensor(
                        column_across(&self.schema, batches, i).map_err(|e| self.context(e))?,
                    )
                };
                Ok((field.name().clone(), column))
            })
            .collect()
    }

    /// What each column holds, from the schema and the batches' headers: nothing is
    /// decompressed or concatenated, and no value is read. A column arrowbridge cannot carry
    /// (strings, decimals, ...) is described with the reason in [`ColumnInfo::error`]; nulls
    /// are found only when the data is read.
    pub fn describe(&self) -> Vec<ColumnInfo> {
        let rows = self.num_rows();
        // One uncompressed batch decodes without reading a value (its buffers are views), and
        // tells exactly which columns are views of the mapping.
        let single = (self.batches.len() == 1 && !self.compressed)
            .then(|| self.batch(0).ok())
            .flatten();
        self.schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, field)| {
                let column = single.as_ref().map(|b| b.column(i).clone());
                self.describe_column(field, rows, column)
            })
            .collect()
    }

    fn describe_column(&self, field: &Field, rows: usize, column: Option<ArrayRef>) -> ColumnInfo {
        let mut info = ColumnInfo {
            name: field.name().clone(),
            arrow_type: field.data_type().to_string(),
            dtype: None,
            shape: Vec::new(),
            nbytes: 0,
            zero_copy: false,
            error: None,
            ragged_shape: None,
        };
        // A bit-packed boolean column is unpacked when read: a copy.
        if field.metadata().get(crate::EXTENSION_NAME_KEY).is_none()
            && field.data_type() == &arrow_schema::DataType::Boolean
        {
            info.dtype = Some(crate::DType::Bool);
            info.shape = vec![rows];
            info.nbytes = rows;
            info.zero_copy = rows == 0;
            return info;
        }
        if is_ragged_field(field) {
            return self.describe_ragged(field, rows, column, info);
        }
        // The type alone gives the dtype and the shape of one row.
        let typed = empty_column(field).and_then(|e| ArrowTensor::from_arrow(field, e.to_data()));
        let t = match typed {
            Ok(t) => t,
            Err(e) => {
                info.error = Some(self.context(e).to_string());
                return info;
            }
        };
        let element = &t.shape()[1..];
        info.dtype = Some(t.dtype());
        info.shape = match field.metadata().get(FORM_KEY).map(String::as_str) {
            Some("element") => element.to_vec(),
            Some("flat") => match flat_shape(field) {
                Ok(shape) => shape,
                Err(e) => {
                    info.error = Some(self.context(e).to_string());
                    return info;
                }
            },
            _ => std::iter::once(rows)
                .chain(element.iter().copied())
                .collect(),
        };
        info.nbytes = info
            .shape
            .iter()
            .try_fold(t.dtype().itemsize(), |acc, &d| acc.checked_mul(d))
            .unwrap_or(usize::MAX);
        info.zero_copy = match column {
            _ if self.batches.is_empty() => true,
            None => false,
            Some(column) => match column_tensor(field, column.as_ref()) {
                Ok(read) => {
                    let start = read.data_ptr() as usize;
                    read.is_empty()
                        || self.mapping.is_some_and(|(base, len)| {
                            start >= base && start.saturating_add(read.nbytes()) <= base + len
                        })
                }
                Err(e) => {
                    info.error = Some(self.context(e).to_string());
                    false
                }
            },
        };
        info
    }
}

impl IpcData {
    /// [`describe`](Self::describe) of an `arrow.variable_shape_tensor` column: its dtype, the
    /// shape `[rows, *uniform_shape]` with the varying sizes `None` in
    /// [`ColumnInfo::ragged_shape`], and (for one uncompressed batch) the values' bytes.
    fn describe_ragged(
        &self,
        field: &Field,
        rows: usize,
        column: Option<ArrayRef>,
        mut info: ColumnInfo,
    ) -> ColumnInfo {
        let empty = arrow_array::new_empty_array(field.data_type()).to_data();
        let typed = match RaggedTensor::from_arrow(field, &empty, true) {
            Ok(t) => t,
            Err(e) => {
                info.error = Some(self.context(e).to_string());
                return info;
            }
        };
        info.dtype = Some(typed.dtype());
        let uniform = typed.uniform_shape().map(<[Option<i32>]>::to_vec);
        let element: Vec<Option<usize>> = match uniform {
            Some(u) => u.iter().map(|d| d.map(|d| d as usize)).collect(),
            None => vec![None; typed.ndim()],
        };
        info.shape = std::iter::once(rows)
            .chain(element.iter().map(|d| d.unwrap_or(0)))
            .collect();
        info.ragged_shape = Some(std::iter::once(Some(rows)).chain(element).collect());
        info.nbytes = 0;
        info.zero_copy = self.batches.is_empty();
        if let Some(column) = column {
            match RaggedTensor::from_arrow(field, &column.to_data(), true) {
                Ok(read) => {
                    info.nbytes = read.nbytes();
                    let start = read.values().as_ptr() as usize;
                    let bit_packed = read.dtype() == crate::DType::Bool;
                    info.zero_copy = read.nbytes() == 0
                        || (!bit_packed
                            && self.mapping.is_some_and(|(base, len)| {
                                start >= base && start.saturating_add(read.nbytes()) <= base + len
                            }));
                }
                Err(e) => info.error = Some(self.context(e).to_string()),
            }
        }
        info
    }
}

/// One column of an IPC file or stream as [`IpcData::describe`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnInfo {
    /// The column's name.
    pub name: String,
    /// Its Arrow type, as Arrow prints it.
    pub arrow_type: String,
    /// The dtype it reads as; `None` when arrowbridge cannot carry it (see `error`).
    pub dtype: Option<crate::DType>,
    /// The shape it reads as (rows first); empty when it cannot be carried.
    pub shape: Vec<usize>,
    /// Bytes of the array it reads as.
    pub nbytes: usize,
    /// Whether reading it gives a view of the memory mapping rather than a copy.
    pub zero_copy: bool,
    /// Why the column cannot be read, when it cannot.
    pub error: Option<String>,
    /// For a ragged column (`arrow.variable_shape_tensor`): `[rows, *sizes]`, a size `None`
    /// where the rows' shapes differ (`shape` then holds 0 there).
    pub ragged_shape: Option<Vec<Option<usize>>>,
}
