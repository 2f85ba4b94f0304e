//! Reading IPC files and streams: [`IpcData`], its batches, tensors and columns, as views
//! of a memory mapping or of one read.

use std::collections::HashMap;
use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_buffer::Buffer;
use arrow_schema::SchemaRef;

use crate::error::{Error, Result};
use crate::tensor::ArrowTensor;

use super::*;

/// Holds a file mapping alive while Arrow buffers point into it.
struct Mapping(#[allow(dead_code)] memmap2::Mmap);

/// An Arrow IPC file or stream, opened for reading.
///
/// Opening reads the schema, the dictionaries and the headers of the record batches, and
/// checks every message ([`check_message`]); a record batch is decoded only when it is read,
/// so [`describe`](Self::describe) reads no data and reading batch by batch holds one batch
/// at a time. Uncompressed buffers are views of the data (a memory mapping, or one read);
/// compressed ones are decompressed when their batch is read.
#[derive(Clone, Debug)]
pub struct IpcData {
    pub(super) path: PathBuf,
    pub(super) data: Buffer,
    /// The file's schema, which every message is decoded against.
    pub(super) full_schema: SchemaRef,
    /// The columns read: all, or those asked for (`projection`, indices into `full_schema`).
    pub(super) schema: SchemaRef,
    pub(super) projection: Option<Vec<usize>>,
    pub(super) dictionaries: HashMap<i64, ArrayRef>,
    pub(super) batches: Vec<MessageLocation>,
    pub(super) rows: Vec<usize>,
    pub(super) compressed: bool,
    pub(super) mapping: Option<(usize, usize)>,
    pub(super) format: IpcFormat,
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
        let mut bytes = vec_for_read(path, len)?;
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

/// A buffer of `len` bytes to read `path` into: allocated, not zeroed (every byte is read
/// into before it is used). An allocation that fails (a file larger than the memory this
/// process may take, `RLIMIT_AS`/`RLIMIT_DATA`) is an [`Error::OutOfMemory`], not an abort.
fn vec_for_read(path: &Path, len: usize) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(len)
        .map_err(|e| Error::OutOfMemory {
            what: format!("reading {} into memory (mmap=False)", path.display()),
            bytes: len as u64,
            reason: e.to_string(),
        })?;
    advise_huge_pages(bytes.spare_capacity_mut());
    // SAFETY: u8 has no invalid bit patterns; `read_parallel` fills every byte or fails,
    // and on failure the buffer is dropped unread.
    unsafe { bytes.set_len(len) };
    Ok(bytes)
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

    pub(super) fn context(&self, e: Error) -> Error {
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
        columns_of(&self.schema, batches).map_err(|e| self.context(e))
    }
}
